"""Every steering input checked at the boundary (strengths, blocks, positions, direction files), the
direction cache checked against its hash, --direction used or refused, and no NaN ever read as a
margin: a pass whose states overflow is an error naming the prompt and the steering."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lexprobe.cli import main
from lexprobe.toolkit.errors import InputError, NonFiniteError
from lexprobe.toolkit.mechanism.direction import RefusalDirection


def _base(readout, out, *extra):
    return ["score", "--model", "tiny-random", "--dtype", "float32", "--readout", str(readout),
            "--suite", "xstest", "--limit", "3", "--out", str(out), *extra]  # fmt: skip


def _direction(tiny, **changes) -> dict:
    data = json.loads(RefusalDirection(torch.ones(tiny.text_config.hidden_size), 1, -1, {}).to_json())
    if changes and "sha256" not in changes:
        del data["sha256"]  # as a file written before directions had one (an edit is caught by it)
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--add-direction", "1e6"], "--add-direction is a multiple of the direction from -50 to 50"),
        (["--add-direction", "-1e38"], "--add-direction is a multiple"),  # a number, not a flag
        (["--ablate-direction", "1000"], "--ablate-direction is the share of the direction removed"),
        (["--ablate-direction", "nan"], "finite"),
        (["--add-direction", "0"], "--add-direction must not be 0"),
    ],
)
def test_steering_strengths_out_of_range_are_one_line(tmp_path, tiny_readout_file, error_line, flags, says):
    assert main(_base(tiny_readout_file, tmp_path / "o", *flags)) == 2
    assert says in error_line()
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"layer": True}, "its layer True is not a whole number"),
        ({"layer": 1.7}, "its layer 1.7 is not a whole number"),
        ({"position": 0}, "not counted back from the template's end"),
        ({"position": -99}, "names template position -99"),
        ({"layer": 99}, "names block 99"),
        ({"vector": "abc"}, "not a list of numbers"),
        ({"vector": [1e400]}, "not one finite, non-zero vector"),
        ({"vector": None}, "not a list of numbers"),
        ({"details": []}, "details are not an object"),
        ({"sha256": "0" * 64}, "do not match its sha256"),
    ],
)
def test_malformed_direction_files_are_one_line(tmp_path, tiny, tiny_readout_file, error_line, change, says):
    data = _direction(tiny, **change)
    if "vector" in change and change["vector"] == [1e400]:
        data["vector"] = [float("inf")] + [1.0] * (tiny.text_config.hidden_size - 1)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(data))
    assert (
        main(_base(tiny_readout_file, tmp_path / "o", "--direction", str(path), "--add-direction", "1")) == 2
    )
    assert says in error_line()


@pytest.mark.parametrize("text", ["[1, 2]", '"direction"', "3", "null"])
def test_a_direction_file_that_is_not_an_object_is_one_line(tmp_path, tiny_readout_file, error_line, text):
    path = tmp_path / "d.json"
    path.write_text(text)
    assert main(_base(tiny_readout_file, tmp_path / "o", "--direction", str(path), "--ablate-direction")) == 2
    assert "not an object" in error_line()


def test_an_edited_vector_in_the_direction_cache_is_never_used(tiny, tiny_readout, tmp_path, monkeypatch):
    from lexprobe.toolkit.mechanism import direction as module
    from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
    from lexprobe.toolkit.scoring.scorer import Scorer

    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path / "cache"))
    found = []

    def select(*args, **kwargs):  # the selection itself is tested elsewhere: count how often it runs
        found.append(1)
        return module.Selection(
            RefusalDirection(torch.ones(tiny.text_config.hidden_size), 1, -2, {}), pd.DataFrame(), {}
        )

    monkeypatch.setattr(module, "select_direction", select)
    scorer = Scorer(tiny, ChatFormat(tiny.tokenizer, SystemPrompt.parse("none")), tiny_readout, 4)
    first, _ = module.find_direction(scorer, "none")
    cached = next((tmp_path / "cache" / "directions").rglob("*.json"))
    data = json.loads(cached.read_text())
    data["vector"][0] = 5.0  # edited by hand
    cached.write_text(json.dumps(data))
    again, _ = module.find_direction(scorer, "none")
    assert len(found) == 2  # found again, not read from the edited file
    assert torch.equal(again.vector, first.vector)


def test_a_direction_no_step_reads_is_refused(tmp_path, tiny, tiny_readout_file, error_line):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_direction(tiny)))
    assert main(_base(tiny_readout_file, tmp_path / "o", "--direction", str(path))) == 2
    assert "--direction is read by --ablate-direction" in error_line()


def test_a_pass_that_overflows_names_the_prompt_and_the_steering(
    tmp_path, tiny, tiny_readout_file, error_line, monkeypatch
):
    from lexprobe.probes import steering

    real = steering._edit

    def overflow(x, steerings, block, control):  # as bf16 does under too strong a steering
        x = real(x, steerings, block, control)
        return x * float("inf") if block == 2 else x

    monkeypatch.setattr(steering, "_edit", overflow)
    path = tmp_path / "d.json"
    path.write_text(json.dumps(_direction(tiny)))
    out = tmp_path / "o"
    assert main(_base(tiny_readout_file, out, "--direction", str(path), "--add-direction", "2")) == 2
    line = error_line()
    assert "not finite" in line and "prompt id" in line and "add +2 x refusal direction" in line
    assert not (out / "scores.csv").exists() or pd.read_csv(out / "scores.csv")["margin"].notna().all()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    add=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**6), 10**6)),
    norm=st.floats(min_value=1e-30, max_value=1e30),
    layer=st.one_of(st.integers(-3, 8), st.booleans(), st.floats(-2, 8)),
)
def test_random_steering_writes_finite_margins_or_exits_2(
    tmp_path_factory, tiny, tiny_readout_file, add, norm, layer
):
    tmp = tmp_path_factory.mktemp("prop")
    vector = torch.randn(tiny.text_config.hidden_size, generator=torch.Generator().manual_seed(0))
    data = _direction(tiny, layer=layer)
    data["vector"] = [float(x) for x in vector / vector.norm() * norm]
    data.pop("sha256", None)
    (tmp / "d.json").write_text(json.dumps(data))
    code = main(
        _base(tiny_readout_file, tmp / "o", "--direction", str(tmp / "d.json"), "--add-direction", repr(add))
    )
    assert code in (0, 2)
    if code == 0:
        assert np.isfinite(pd.read_csv(tmp / "o" / "scores.csv")["margin"]).all()


def test_steering_built_in_python_is_checked_too(tiny):
    from lexprobe.probes.steering import Steering

    d = torch.ones(tiny.text_config.hidden_size)
    for kwargs in ({"ablate": 3.0}, {"add": 1e6, "at": 1}, {"add": 1.0, "at": True}, {"add": 1.0, "at": 1.5}):
        with pytest.raises(ValueError):
            Steering(d, **kwargs)
    with pytest.raises(ValueError, match="norm"):
        Steering(d * 1e6, ablate=1.0)
    assert isinstance(NonFiniteError([0], None, "bfloat16"), InputError)


def test_an_edited_readout_file_is_refused_and_an_edited_cache_entry_calibrated_again(
    tmp_path, tiny_readout, tiny_readout_file, error_line
):
    from lexprobe.probes.margin import RefusalReadout

    assert RefusalReadout.from_json(tiny_readout.to_json()).sha256() == tiny_readout.sha256()
    data = json.loads(tiny_readout.to_json())
    data["nodes"][0]["other"] += 1.0  # edited by hand
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(data))
    argv = ["score", "--model", "tiny-random", "--readout", str(edited), "--suite", "xstest", "--limit", "2",
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    assert "do not match its sha256" in error_line()


def test_an_edited_saved_threshold_is_not_used(tiny, tmp_path, monkeypatch):
    from lexprobe.toolkit.models.chat import SystemPrompt
    from lexprobe.toolkit.scoring import thresholds

    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path))
    system = SystemPrompt.parse("none")
    thresholds.save_threshold(tiny, system, 1.25, {"n": 10})
    assert thresholds.refusal_threshold(tiny, system)[0] == 1.25
    path = next(tmp_path.rglob("*.json"))
    path.write_text(path.read_text().replace("1.25", "3.5"))
    value, source = thresholds.refusal_threshold(tiny, system)
    assert value == 0.0 and source == thresholds.DEFAULT_SOURCE
