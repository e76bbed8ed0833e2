"""`--device-map`: tiny-random spread over devices with accelerate (on a CPU machine: half its blocks
in memory, half offloaded to disk and run on the CPU through accelerate's hooks) gives the margins,
layer margins, gradients and generations of the unsplit model; maps that cannot work are one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lexprobe.cli import main


def _split_map(tmp_path, lm_head="cpu"):
    mapping = {"model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk"}
    mapping |= {"model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": lm_head}
    path = tmp_path / "map.json"
    path.write_text(json.dumps(mapping))
    return path


def _run(tmp_path, study, out, readout, *extra):
    args = [study, "--model", "tiny-random", "--suite", "xstest", "--out", str(tmp_path / out)]
    return main([*args, *(["--readout", str(readout)] if readout else []), *extra])


def test_a_split_model_scores_as_the_whole_one(tmp_path, tiny_readout_file):
    split = _split_map(tmp_path)
    base = ("--limit", "12", "--batch-size", "4", "--layers")
    assert _run(tmp_path, "score", "whole", tiny_readout_file, *base) == 0
    assert _run(tmp_path, "score", "split", tiny_readout_file, *base, "--device-map", str(split)) == 0
    whole, parted = (pd.read_csv(tmp_path / d / "scores.csv") for d in ("whole", "split"))
    numeric = [c for c in whole.columns if c.startswith(("margin", "p_refuse"))]
    assert "margin_layer_1" in numeric
    np.testing.assert_allclose(parted[numeric], whole[numeric], atol=1e-5)
    run = json.loads((tmp_path / "split" / "run.json").read_text())
    assert run["device_map"] == {"cpu": 5, "disk": 1}
    assert "device_map" not in json.loads((tmp_path / "whole" / "run.json").read_text())


def test_a_split_model_attributes_and_generates_as_the_whole_one(tmp_path, tiny_readout_file):
    split = str(_split_map(tmp_path))
    base = ("--limit", "4", "--method", "integrated_gradients,saliency", "--steps", "4", "--max-steps", "8")
    assert _run(tmp_path, "attribute", "whole", tiny_readout_file, *base) == 0
    assert _run(tmp_path, "attribute", "split", tiny_readout_file, *base, "--device-map", split) == 0
    whole, parted = (pd.read_csv(tmp_path / d / "attributions.csv") for d in ("whole", "split"))
    assert len(whole) > 8 and whole["score"].abs().max() > 0
    np.testing.assert_allclose(parted["score"], whole["score"], rtol=1e-4, atol=1e-5)

    gen = ("--limit", "4", "--max-new-tokens", "6")
    assert _run(tmp_path, "generate", "gwhole", None, *gen) == 0
    assert _run(tmp_path, "generate", "gsplit", None, *gen, "--device-map", split) == 0
    whole, parted = (pd.read_csv(tmp_path / d / "completions.csv") for d in ("gwhole", "gsplit"))
    assert list(whole["completion"]) == list(parted["completion"])


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--device-map", "{not json"), "not JSON"),
        (("--device-map", "nowhere.json"), "neither auto"),
        (("--device-map", '{"model.layers.0": "cpu"}'), "places no device for"),
        (("--device-map", '{"": "cpu", "model.blocks": "disk"}'), "not a module"),
        (("--device-map", '{"": "cpu", "lm_head": "tpu"}'), "not a GPU index"),
        (("--device-map", "auto", "--device", "cpu"), "not both"),
    ],
)
def test_maps_that_cannot_work_are_one_line(tmp_path, tiny_readout_file, error_line, extra, words):
    assert _run(tmp_path, "score", "bad", tiny_readout_file, "--limit", "2", *extra) == 2
    line = error_line()
    assert words in line and "Traceback" not in line


def test_a_map_that_offloads_the_unembedding_is_refused(tmp_path, tiny_readout_file, error_line):
    split = _split_map(tmp_path, lm_head="disk")
    assert _run(tmp_path, "score", "bad", tiny_readout_file, "--device-map", str(split)) == 2
    assert "offloads lm_head" in error_line()


def test_an_automatic_map_keeps_what_lexprobe_reads_in_memory(tiny):
    """accelerate may offload anything; the plan pins embedding, final norm and unembedding to the main
    device, splitting an ancestor that placed them elsewhere."""
    from lexprobe.toolkit.models.placement import offloaded, pin

    keep = ["model.embed_tokens", "model.norm", "lm_head"]
    mapping = pin({"model": "disk", "lm_head": "disk"}, tiny.model, keep)
    assert all(not offloaded(mapping, mapping[k]) for k in keep)
    assert mapping["model.layers"] == "disk" and "model" not in mapping
    on_gpus = pin(
        {"model.embed_tokens": 0, "model.layers": 1, "model.norm": "cpu", "lm_head": "cpu"}, tiny.model, keep
    )
    assert on_gpus["model.norm"] == 0 and on_gpus["lm_head"] == 0 and on_gpus["model.layers"] == 1


def test_a_split_model_steers_as_the_whole_one(tmp_path, tiny_readout_file, tiny):
    """The steering hooks sit on modules accelerate has hooked too (one block offloaded to disk)."""
    import torch

    from lexprobe.toolkit.mechanism.direction import RefusalDirection

    direction = tmp_path / "direction.json"
    direction.write_text(
        RefusalDirection(torch.linspace(-1, 1, tiny.text_config.hidden_size), 1, -1, {}).to_json()
    )
    steer = ("--limit", "8", "--direction", str(direction), "--add-direction", "2")
    assert _run(tmp_path, "score", "whole", tiny_readout_file, *steer) == 0
    assert (
        _run(tmp_path, "score", "split", tiny_readout_file, *steer, "--device-map", str(_split_map(tmp_path)))
        == 0
    )
    assert _run(tmp_path, "score", "plain", tiny_readout_file, "--limit", "8") == 0
    whole, parted, plain = (pd.read_csv(tmp_path / d / "scores.csv") for d in ("whole", "split", "plain"))
    np.testing.assert_allclose(parted["margin"], whole["margin"], atol=1e-5)
    assert np.abs(whole["margin"] - plain["margin"]).max() > 1e-3
