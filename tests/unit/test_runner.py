"""The runner every per-prompt study goes through (`analyses.runner`): one run.json layout for all of
them, the output checked before the model loads, and the steering on only inside the study."""

import json

import pandas as pd
import pytest

from lexprobe.cli import main

FAST_IG = ["--method", "occlusion", "--no-faithfulness"]


def _run(tmp_path, readout, command, *args):
    out = tmp_path / command
    base = [command, "--model", "tiny-random", "--readout", str(readout), "--out", str(out)]
    assert main([*base, *args]) == 0, command
    return json.loads((out / "run.json").read_text())


def test_every_per_prompt_study_writes_the_same_run_json_keys(tmp_path, tiny_readout_file):
    pairs = tmp_path / "pairs.csv"
    pd.DataFrame({"prompt_a": ["How do I kill a process?"], "prompt_b": ["How do I stop a process?"]}).to_csv(
        pairs, index=False
    )
    suite = ["--suite", "xstest", "--ids", "1", "2"]
    runs = {
        "score": _run(tmp_path, tiny_readout_file, "score", *suite),
        "generate": _run(tmp_path, tiny_readout_file, "generate", *suite, "--max-new-tokens", "2"),
        "perturb": _run(tmp_path, tiny_readout_file, "perturb", *suite, "--no-figures"),
        "attribute": _run(tmp_path, tiny_readout_file, "attribute", *suite, *FAST_IG, "--no-figures"),
        "pairs": _run(tmp_path, tiny_readout_file, "pairs", "--pairs", str(pairs)),
    }
    keys = {kind: set(run) for kind, run in runs.items()}
    for kind in keys:
        assert keys[kind] == keys["score"], (kind, keys[kind] ^ keys["score"])
    for kind, run in runs.items():
        assert run["kind"] == kind and run["status"] == "complete"
        assert run["n_prompts_this_run"] == run["n_prompts"]  # nothing was there before
        assert isinstance(run["settings"], dict) and isinstance(run["details"], dict)
    assert runs["generate"]["settings"]["max_new_tokens"] == 2
    assert runs["generate"]["readout_sha256"] is None  # it reads no margins
    assert runs["score"]["readout_sha256"] == runs["perturb"]["readout_sha256"]
    assert "threshold" in runs["perturb"]["details"] and "threshold" in runs["pairs"]["details"]


def test_a_finished_output_is_refused_before_the_model_loads(
    tmp_path, tiny_readout_file, monkeypatch, capsys
):
    _run(tmp_path, tiny_readout_file, "generate", "--suite", "xstest", "--ids", "1", "--max-new-tokens", "1")

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr("lexprobe.analyses.session.load_model", no_load)
    args = ["--suite", "xstest", "--ids", "1", "--max-new-tokens", "1"]
    base = ["generate", "--model", "tiny-random", "--out", str(tmp_path / "generate")]
    assert main([*base, *args]) == 2
    assert "--resume" in capsys.readouterr().err


def test_a_resumed_run_with_other_settings_is_refused(tmp_path, tiny_readout_file, capsys):
    _run(tmp_path, tiny_readout_file, "generate", "--suite", "xstest", "--ids", "1", "--max-new-tokens", "1")
    base = ["generate", "--model", "tiny-random", "--out", str(tmp_path / "generate"), "--suite", "xstest"]
    assert main([*base, "--ids", "1", "2", "--max-new-tokens", "2", "--resume"]) == 2
    assert "settings.max_new_tokens: 1 there, 2 here" in capsys.readouterr().err


def test_steering_is_on_inside_the_study_only(tmp_path, tiny_readout_file, tiny, monkeypatch):
    import torch

    from lexprobe.analyses import runner, session
    from lexprobe.toolkit.mechanism.direction import RefusalDirection

    opened, seen = [], []
    open_session, write = session.open_session, runner.RowStore.write
    monkeypatch.setattr(
        session, "open_session", lambda *a, **k: opened.append(open_session(*a, **k)) or opened[-1]
    )
    monkeypatch.setattr(
        runner.RowStore,
        "write",
        lambda self, rows: seen.append(opened[0].lm.extra.get("steering")) or write(self, rows),
    )
    direction = tmp_path / "direction.json"
    vector = torch.ones(tiny.text_config.hidden_size) / tiny.text_config.hidden_size**0.5
    direction.write_text(RefusalDirection(vector, layer=1, position=-1).to_json())
    steer = ["--direction", str(direction), "--ablate-direction", "1"]
    _run(tmp_path, tiny_readout_file, "score", "--suite", "xstest", "--ids", "1", *steer)
    assert seen and all(s is not None for s in seen)  # every row was scored steered ...
    assert opened[0].lm.extra.get("steering") is None  # ... and the hooks are gone after the study


def test_a_resume_under_another_condition_is_refused_before_the_model_loads(
    tmp_path, tiny_readout_file, monkeypatch, capsys
):
    args = ["--suite", "xstest", "--ids", "1", "--max-new-tokens", "1"]
    _run(tmp_path, tiny_readout_file, "generate", *args)
    monkeypatch.setattr(
        "lexprobe.analyses.session.load_model", lambda *a, **k: pytest.fail("the model loaded")
    )
    base = ["generate", "--model", "tiny-random", "--out", str(tmp_path / "generate"), *args, "--resume"]
    assert main([*base, "--system-prompt", "none"]) == 2
    assert "system_prompt." in capsys.readouterr().err
    assert main([*base, "--dtype", "bf16"]) == 2  # an alias of the dtype the run did not use
    assert "dtype: 'float32' there, 'bfloat16' here" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_record_of_the_runs_it_continues(tmp_path, tiny_readout_file):
    first = _run(
        tmp_path, tiny_readout_file, "generate", "--suite", "xstest", "--ids", "1", "--max-new-tokens", "1"
    )
    assert first["earlier_runs"] == []
    args = ["--suite", "xstest", "--ids", "1", "2", "--max-new-tokens", "1", "--resume"]
    second = _run(tmp_path, tiny_readout_file, "generate", *args, "--generate-batch-size", "3")
    third = _run(tmp_path, tiny_readout_file, "generate", *args)
    assert [r["n_prompts_this_run"] for r in third["earlier_runs"]] == [1, 1]  # what each invocation did
    assert [r["batch_size"] for r in third["earlier_runs"]] == [48, 3]  # and in batches of what size
    assert third["earlier_runs"][0]["started_at"] == first["started_at"] and third["n_prompts_this_run"] == 0
    assert second["earlier_runs"] == third["earlier_runs"][:1]
