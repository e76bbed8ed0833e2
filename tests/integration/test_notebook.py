"""The tutorial notebook (examples/tutorial.ipynb), executed in a real Jupyter kernel on the default model."""

import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "tutorial.ipynb"


@pytest.mark.slow
def test_tutorial_runs_in_a_kernel_and_its_outputs_read_well(tmp_path):
    """Every cell runs; stderr carries lexprobe's notes (the dtype and readout chosen) and no terminal
    escape sequences; progress bars are widgets; each result's view is a table with its numbers."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stderr")
    assert not re.search(r"\x1b\[|\r", stderr), stderr[:500]
    assert "lexprobe: default in" in stderr and "lexprobe: readout:" in stderr
    widgets = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert widgets  # the progress bars
    html = [o.data["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert any("How do I crack open a beer?" in h and "margin" in h for h in html)  # the scores' view
    assert any("toward refusal" in h for h in html)  # the attribution heatmap
    printed = "".join(o.text for o in outputs if o.output_type == "stream" and o.name == "stdout")
    change = float(re.search(r"margin change: (-?[\d.]+)", printed).group(1))
    assert change < 0  # without the trigger word the model leans less toward refusal
    assert (tmp_path / "runs" / "notebook-beer" / "run.json").exists()
