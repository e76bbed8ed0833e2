"""`lexprobe compare` on tiny-random: a cell per model x condition x suite equal to its own `score` run,
the trade-off figure and report, resume reusing finished cells, and bad plans as one line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lexprobe.cli import main

PLAN = """models = ["tiny-random"]
conditions = ["none", "model-default"]
suites = ["xstest"]
types = ["homonyms", "contrast_homonyms"]
limit = 30
"""


def _compare(tmp_path, plan=PLAN, *extra, name="plan.toml"):
    (tmp_path / name).write_text(plan)
    return main(["compare", "--config", str(tmp_path / name), "--out", str(tmp_path / "cmp"), *extra])


def test_cells_equal_their_own_score_runs_and_the_report_is_written(tmp_path):
    assert _compare(tmp_path) == 0
    out = tmp_path / "cmp"
    cells = pd.read_csv(out / "cells.csv")
    assert list(cells[["model", "condition", "suite"]].itertuples(index=False, name=None)) == [
        ("tiny-random", "none", "xstest"),
        ("tiny-random", "model-default", "xstest"),
    ]
    for row in cells.itertuples():
        scored = pd.read_csv(out / row.dir / "scores" / "scores.csv")
        assert row.n_safe + row.n_unsafe == len(scored) == 30 and row.n_unsafe == 5
        safe = scored[scored["label"] == "safe"]["margin"]
        unsafe = scored[scored["label"] == "unsafe"]["margin"]
        assert row.safe_refusal_rate == pytest.approx((safe > 0).mean())
        assert row.unsafe_refusal_rate == pytest.approx((unsafe > 0).mean())
        assert row.mean_margin_unsafe == pytest.approx(unsafe.mean())
    types = pd.read_csv(out / "types.csv")
    assert set(types["type"]) == {"homonyms", "contrast_homonyms"} and len(types) == 4
    assert (out / "tradeoff.png").stat().st_size > 0
    page = (out / "report.html").read_text()
    assert "data:image/png;base64," in page and "model-default" in page and "<script" not in page
    # the two conditions are different prompts to the model: different margins
    a, b = (pd.read_csv(out / d / "scores" / "scores.csv")["margin"] for d in cells["dir"])
    assert not np.allclose(a, b)


def test_resume_reuses_finished_cells_and_a_rerun_without_it_is_refused(tmp_path, capsys):
    assert _compare(tmp_path) == 0
    first = pd.read_csv(tmp_path / "cmp" / "cells.csv")
    assert _compare(tmp_path) == 2
    assert "--resume" in capsys.readouterr().err
    assert _compare(tmp_path, PLAN, "--resume") == 0
    again = pd.read_csv(tmp_path / "cmp" / "cells.csv")
    pd.testing.assert_frame_equal(first, again)


@pytest.mark.parametrize(
    ("plan", "says"),
    [
        ('conditions = ["none"]\n', "lists no models"),
        ('models = ["tiny-random"]\nmodel = "x"\n', "unknown key model"),
        ('models = "tiny-random"\nlimit = 0\n', "limit must be at least 1"),
        ('models = ["tiny-random"]\nsuites = []\n', "suites is empty"),
        ("models = [tiny-random\n", "not valid TOML"),
        ('models = ["tiny-random"]\nperturb = "yes"\n', "perturb must be true or false"),
        ('models = ["tiny-random", "tiny-random"]\n', "models lists tiny-random twice"),
        ('models = ["tiny-random", "no-such-model"]\n', "unknown model spec 'no-such-model'"),
        ('models = ["tiny-random"]\nsuites = ["xstest", "xstset"]\n', "xstset"),
        ('models = ["tiny-random"]\ndevice_map = "evenly"\n', "--device-map 'evenly' is neither"),
        ('models = ["tiny-random"]\nharmfulness = 3\n', "harmfulness must be true, false or a probe.json"),
        (
            'models = ["tiny-random"]\nharmfulness = "nope.json"\n',
            "harmfulness probe 'nope.json' does not exist",
        ),
        ('models = ["tiny-random"]\nsteer = "nope.json"\n', "the plan's steer 'nope.json' does not exist"),
        ('models = ["tiny-random"]\ndtype = "fp64"\n', "the plan's dtype 'fp64'"),
        ('models = ["tiny-random"]\nchat_template = "chatmlx"\n', "the plan's chat_template 'chatmlx'"),
    ],
)
def test_a_bad_plan_is_one_line_before_any_cell_runs(tmp_path, capsys, plan, says):
    assert _compare(tmp_path, plan) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not (tmp_path / "cmp").exists()


def test_yaml_and_json_plans_read_as_the_toml_one(tmp_path):
    from lexprobe.analyses.compare import Plan

    (tmp_path / "p.yaml").write_text("models: [tiny-random]\nconditions: [none]\nlimit: 3\n")
    (tmp_path / "p.toml").write_text('models = ["tiny-random"]\nconditions = ["none"]\nlimit = 3\n')
    (tmp_path / "p.json").write_text('{"models": ["tiny-random"], "conditions": ["none"], "limit": 3}')
    assert Plan.read(tmp_path / "p.yaml") == Plan.read(tmp_path / "p.toml") == Plan.read(tmp_path / "p.json")


def test_perturb_adds_each_cells_pooled_trigger_effect(tmp_path):
    plan = (
        'models = ["tiny-random"]\nconditions = ["none"]\ntypes = ["homonyms"]\nlimit = 6\nperturb = true\n'
    )
    assert _compare(tmp_path, plan) == 0
    cell = pd.read_csv(tmp_path / "cmp" / "cells.csv").iloc[0]
    pooled = pd.read_csv(tmp_path / "cmp" / cell["dir"] / "perturb" / "pooled.csv")
    trig = pooled[(pooled["contrast"] == "triggers") & (pooled["label"] == "safe")].iloc[0]
    assert cell["trigger_n"] == trig["n"] > 0
    assert cell["trigger_effect"] == pytest.approx(trig["mean"])
    assert cell["trigger_ci_low"] <= cell["trigger_effect"] <= cell["trigger_ci_high"]


def test_with_a_probe_each_cell_has_its_lexical_over_refusal_index(tmp_path, tiny_probe_file):
    plan = f'models = ["tiny-random"]\nconditions = ["none"]\nlimit = 60\nharmfulness = "{tiny_probe_file}"\n'
    assert _compare(tmp_path, plan) == 0
    cell = pd.read_csv(tmp_path / "cmp" / "cells.csv").iloc[0]
    scored = pd.read_csv(tmp_path / "cmp" / cell["dir"] / "scores" / "scores.csv")
    refused_safe = scored[(scored["label"] == "safe") & (scored["margin"] > 0)]
    assert cell["n_refused_safe"] == len(refused_safe)
    if len(refused_safe):
        assert cell["lexical_over_refusal_index"] == pytest.approx((refused_safe["harmfulness"] <= 0).mean())
    else:  # nothing refused: no index to give
        assert np.isnan(cell["lexical_over_refusal_index"])
    from lexprobe.toolkit.stats import auroc

    assert cell["harmfulness_auroc"] == pytest.approx(
        auroc(scored["label"] == "unsafe", scored["harmfulness"])
    )


def test_a_cell_that_cannot_run_is_refused_before_the_first_cell(tmp_path, tiny, capsys):
    """A model whose files carry no chat template fails its cells in the plan check, not after the
    cells of the models before it have run."""
    import copy

    bare = tmp_path / "bare"
    tiny.model.save_pretrained(bare)
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(bare)
    plan = f'models = ["tiny-random", "{bare}"]\nconditions = ["none"]\nlimit = 2\n'
    assert _compare(tmp_path, plan) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the cell '{bare}' x 'none' cannot run" in err[0]
    assert "the plan's chat_template" in err[0] and "--chat-template" not in err[0]  # what the plan can say
    assert not (tmp_path / "cmp").exists()  # no cell ran
    assert _compare(tmp_path, plan + 'chat_template = "chatml"\n') == 0  # ... and with it, every cell runs
