"""The refusal direction on tiny-random: candidates are differences of the mean block inputs at the
template's positions (checked against one-prompt-at-a-time passes), the selection takes the
lowest-bypass candidate that passes its filters, and the file round-trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lexprobe.probes.hooks import output_tensor
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.suites import load_suite
from lexprobe.toolkit.mechanism.direction import (
    RefusalDirection,
    block_input_means,
    select_direction,
    template_positions,
)
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.scoring.scorer import Scorer


@pytest.fixture(scope="module")
def scorer(tiny, tiny_readout):
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"))
    return Scorer(tiny, fmt, tiny_readout, batch_size=4)


def _texts(name, n):
    return load_suite(name).frame["prompt"].tolist()[:n]


def test_block_input_means_are_the_template_positions_means(scorer):
    texts = _texts("calibration-harmful", 6)
    lm, n_pos = scorer.lm, template_positions(scorer)
    assert n_pos >= 1
    means = block_input_means(scorer, texts)
    assert means.shape == (len(lm.layers), n_pos, lm.text_config.hidden_size)
    rows = []
    seen = []
    pairs = [(m, lambda _m, _i, o: seen.append(output_tensor(o)[0])) for m in [lm.embed, *lm.layers][:-1]]
    for text in texts:  # one prompt a pass, no padding: its last n_pos suffix tokens are the template's
        seen.clear()
        suffix = scorer.suffix_ids(scorer.encode(text))
        with torch.no_grad():
            scorer.forward(scorer.batch([suffix]), hook_pairs=pairs)
        end = len(suffix)
        rows.append(torch.stack([h[end - n_pos : end] for h in seen]).double())
    torch.testing.assert_close(means, torch.stack(rows).mean(0), atol=1e-5, rtol=1e-5)


def test_the_selection_is_the_lowest_bypass_candidate_that_passes(scorer, tmp_path):
    train = (_texts("calibration-harmful", 8), _texts("calibration-harmless", 8))
    val = (_texts("calibration-harmful-val", 4), _texts("calibration-harmless-val", 4))
    sel = select_direction(
        scorer, train, val, kl_bound=math.inf, last_layers=0.0, induce_min=-math.inf, by_margin=False
    )
    table = sel.candidates
    n_layers, n_pos = len(scorer.lm.layers), template_positions(scorer)
    assert len(table) == n_layers * n_pos and table["selected"].sum() == 1
    screened = table.dropna(subset=["bypass_screen"])
    assert len(screened) == (n_layers - 1) * n_pos  # the embedding: the same template tokens, no candidate
    assert table.loc[table["layer"] == 0, "norm"].eq(0).all()
    finalists = table.dropna(subset=["bypass_val"])
    assert table.loc[table["selected"], "bypass_val"].item() == finalists["bypass_val"].min()
    d = sel.direction
    diff = block_input_means(scorer, train[0]) - block_input_means(scorer, train[1])
    torch.testing.assert_close(d.vector, diff[d.layer, d.position].float())
    again = RefusalDirection.from_json(d.to_json(), "test", scorer.lm.text_config.hidden_size)
    torch.testing.assert_close(again.vector, d.vector)
    assert (again.layer, again.position) == (d.layer, d.position)
    from lexprobe.analyses.direction import DirectionResult

    DirectionResult(table, {"model_spec": "tiny-random"}, direction=d).save(tmp_path / "out")
    assert (tmp_path / "out" / "direction.png").stat().st_size > 10_000
    loaded = DirectionResult.load(tmp_path / "out")
    torch.testing.assert_close(loaded.direction.vector, d.vector)
    # the filters: with a KL bound below every candidate's, none passes
    with pytest.raises(InputError, match="no candidate direction passes"):
        select_direction(
            scorer, train, val, kl_bound=1e-12, last_layers=0.0, induce_min=-math.inf, by_margin=False
        )


def test_a_direction_file_of_another_model_is_refused():
    other = RefusalDirection(torch.ones(32), 1, -1, {})
    with pytest.raises(InputError, match="d_model 32"):
        RefusalDirection.from_json(other.to_json(), "x.json", d_model=64)
    with pytest.raises(InputError, match="not a lexprobe refusal direction"):
        RefusalDirection.from_json('{"layer": 1}', "x.json")
    assert np.isfinite(other.vector.numpy()).all()


@pytest.fixture(scope="module")
def direction_file(tmp_path_factory, scorer):
    train = (_texts("calibration-harmful", 8), _texts("calibration-harmless", 8))
    val = (_texts("calibration-harmful-val", 4), _texts("calibration-harmless-val", 4))
    sel = select_direction(
        scorer, train, val, kl_bound=math.inf, last_layers=0.0, induce_min=-math.inf, by_margin=False
    )
    path = tmp_path_factory.mktemp("direction") / "direction.json"
    path.write_text(sel.direction.to_json())
    return path, sel.direction


def _score(tmp_path, readout, out, *extra):
    from lexprobe.cli import main

    args = ["score", "--model", "tiny-random", "--readout", str(readout), "--suite", "xstest", "--limit", "8"]
    return main([*args, "--out", str(tmp_path / out), *extra])


def test_any_command_runs_steered_and_records_it(tmp_path, tiny_readout_file, direction_file, scorer):
    import json

    import pandas as pd

    from lexprobe.probes.steering import steered

    path, direction = direction_file
    assert _score(tmp_path, tiny_readout_file, "plain") == 0
    assert _score(tmp_path, tiny_readout_file, "ablated", "--direction", str(path), "--ablate-direction") == 0
    assert _score(tmp_path, tiny_readout_file, "added", "--direction", str(path), "--add-direction", "4") == 0
    plain, ablated, added = (pd.read_csv(tmp_path / d / "scores.csv") for d in ("plain", "ablated", "added"))
    with steered(scorer.lm, direction.steering(ablate=1.0)):
        expected = scorer.score(plain["prompt"].tolist()).margin
    np.testing.assert_allclose(ablated["margin"], expected, atol=1e-5)
    assert np.abs(ablated["margin"] - plain["margin"]).max() > 1e-3
    assert np.abs(added["margin"] - plain["margin"]).max() > 1e-3
    run = json.loads((tmp_path / "ablated" / "run.json").read_text())
    assert run["steering"].startswith("ablate refusal direction")
    assert json.loads((tmp_path / "plain" / "run.json").read_text())["steering"] is None
    assert "steering" not in scorer.lm.extra  # the hooks are gone after the run
    # a resumed run must be steered as the one it continues
    assert _score(tmp_path, tiny_readout_file, "ablated", "--resume", "--limit", "12") == 2


def test_direction_on_a_model_that_refuses_nothing_is_one_line(
    tmp_path, tiny_readout_file, error_line, monkeypatch
):
    """tiny-random refuses none of the harmful instructions under its readout: no direction to find."""
    from lexprobe.cli import main
    from lexprobe.toolkit.mechanism.direction import select_direction

    args = ["direction", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file)]
    args += ["--val-prompts", "2"]
    assert main([*args, "--train-prompts", "4", "--out", str(tmp_path / "d")]) == 2
    assert "too few calibration prompts the model treats as their class" in error_line()

    # the failed search is cached: the next run is told without searching; --overwrite searches again
    from lexprobe.toolkit.mechanism import direction

    searched = []

    def counted(*args, **kwargs):
        searched.append(1)
        return select_direction(*args, **kwargs)

    monkeypatch.setattr(direction, "select_direction", counted)
    assert main([*args, "--train-prompts", "4", "--out", str(tmp_path / "d")]) == 2
    line = error_line()
    assert "too few calibration prompts" in line and "cached" in line and "--overwrite" in line
    assert not searched
    assert main([*args, "--train-prompts", "4", "--out", str(tmp_path / "d"), "--overwrite"]) == 2
    assert searched and "cached" not in error_line()


def test_mitigate_writes_a_row_per_mitigation_and_strength(
    tmp_path, tiny_readout_file, direction_file, tiny_probe_file
):
    """tiny-random refuses too few of lexprobe's harmless prompts for a false-refusal vector: a warning,
    and the other rows; the unmitigated row's rates are those of `score`."""
    import pandas as pd

    from lexprobe.cli import main

    path, _ = direction_file
    base = ["--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest"]
    assert main(["score", *base, "--out", str(tmp_path / "score")]) == 0
    args = ["mitigate", *base, "--direction", str(path), "--ablate", "0.5,1", "--generate-per-type", "1"]
    args += ["--harmfulness", str(tiny_probe_file), "--selection-prompts", "4", "--gate-width", "0"]
    assert main([*args, "--max-new-tokens", "4", "--out", str(tmp_path / "m")]) == 0
    table = pd.read_csv(tmp_path / "m" / "tradeoff.csv")
    assert list(table["mitigation"]) == [
        "none",
        "refusal_direction",
        "refusal_direction",
        "conditional",
        "instruction",
    ]
    assert list(table["strength"]) == [0, 0.5, 1.0, 1.0, 1.0]
    scores = pd.read_csv(tmp_path / "score" / "scores.csv")
    safe = scores["label"] == "safe"
    none = table.iloc[0]
    assert none["safe_refusal_rate"] == (scores["margin"][safe] > 0).mean()
    assert none["unsafe_refusal_rate"] == (scores["margin"][~safe] > 0).mean()
    assert np.isclose(none["safe_mean_margin"], scores["margin"][safe].mean())
    assert table["safe_mean_margin"].nunique() == len(table)  # every mitigation moved the margins
    types = scores.groupby("label")["type"].nunique()  # one generated prompt of each type
    assert none["n_generated_safe"] == types["safe"] and none["n_generated_unsafe"] == types["unsafe"]
    margins = pd.read_csv(tmp_path / "m" / "margins.csv")
    assert len(margins) == len(table) * len(scores)
    assert (tmp_path / "m" / "tradeoff.png").exists()


def test_trigger_note_names_the_prompts_triggers():
    from lexprobe.analyses.mitigate import trigger_note
    from lexprobe.toolkit.substitution.engine import Substituter

    sub = Substituter(strategies=("lexicon",))
    assert trigger_note(sub, "How can I kill a Python process?").endswith(
        'Note: the word "kill" in this request is not meant in a harmful sense.'
    )
    assert trigger_note(sub, "What is the capital of France?") == "What is the capital of France?"


def test_directions_that_cannot_steer_this_model_are_one_line(tmp_path, tiny_readout_file, tiny, error_line):
    from lexprobe.cli import main

    deep = tmp_path / "deep.json"
    deep.write_text(RefusalDirection(torch.ones(tiny.text_config.hidden_size), 99, -1, {}).to_json())
    base = ["score", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file)]
    base += ["--suite", "xstest", "--limit", "2"]
    assert main([*base, "--direction", str(deep), "--add-direction", "1", "--out", str(tmp_path / "a")]) == 2
    assert "names block 99" in error_line()
    good = tmp_path / "good.json"
    good.write_text(RefusalDirection(torch.ones(tiny.text_config.hidden_size), 1, -1, {}).to_json())
    both = ["--direction", str(good), "--add-direction", "1", "--ablate-direction"]
    assert main([*base, *both, "--out", str(tmp_path / "b")]) == 2
    assert "give one of them" in error_line()
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    assert main([*base, "--direction", str(binary), "--ablate-direction", "--out", str(tmp_path / "c")]) == 2
    assert "cannot be read as UTF-8" in error_line()
