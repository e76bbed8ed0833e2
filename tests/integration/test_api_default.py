"""The README's Python API example, verbatim, on the embedded default model."""

import os
import subprocess
import sys

import pandas as pd
import pytest


@pytest.mark.slow
def test_readme_example_on_the_default_model(tmp_path, readme_python_example):
    env = {**os.environ, "LEXPROBE_QUIET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", readme_python_example], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    words = pd.read_csv(tmp_path / "runs" / "beer" / "attributions.csv")
    assert set(words["method"]) == {"saliency", "occlusion"}
    assert "crack" in proc.stdout  # the terminal heatmap
