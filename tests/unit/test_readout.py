import json
from dataclasses import asdict

import numpy as np
import pytest

from lexprobe.probes.margin import RefusalReadout
from lexprobe.probes.readout import ReadoutSettings, derive_readout, load_readout_file
from lexprobe.toolkit.errors import LexprobeError

I_, AM, SORRY, AS, AN, AI, SURE, CANNOT, DONT = range(1, 10)


def test_derive_readout_expands_only_ambiguous_prefixes():
    seqs = (
        [[I_, AM, SORRY]] * 5  # "I'm sorry" refusals
        + [[AS, AN, AI, CANNOT]] * 3  # "As an AI, I cannot" refusals
        + [[AS, AN, AI, DONT]] * 2  # "As an AI, I don't ... but" compliance
        + [[SURE, I_]] * 4
    )
    refused = [True] * 8 + [False] * 6
    ro = derive_readout(seqs, refused, ReadoutSettings(min_count=2, prior=1.0))
    assert set(ro.nodes) == {(), (AS,), (AS, AN), (AS, AN, AI)}  # "I" is never ambiguous, "As" is
    root = ro.nodes[()]
    assert root.other == 0.0
    assert root.children[I_] == pytest.approx(5 / 6)  # (5 + 1 * 0) / (5 + 1)
    assert root.children[SURE] == 0.0
    assert root.children[AS] == pytest.approx(3 / 6)
    leaf = ro.nodes[(AS, AN, AI)]
    assert leaf.other == pytest.approx(ro.nodes[(AS, AN)].children[AI])  # unseen continuations back off
    assert leaf.children[CANNOT] > 0.5 > leaf.children[DONT]
    assert ro.extra_tokens == [AS, AN, AI]
    assert ro.tree_parents() == [-1, 0, 1]


def test_depth_limit_and_min_count():
    seqs = [[AS, AN, AI, CANNOT]] * 3 + [[AS, AN, AI, DONT]] * 1
    refused = [True, True, True, False]
    ro = derive_readout(seqs, refused, ReadoutSettings(min_count=1, max_depth=2))
    assert max(len(p) for p in ro.nodes) == 1  # expansion stops at depth 2
    ro = derive_readout(seqs, refused, ReadoutSettings(min_count=2))
    assert set(ro.nodes) == {()}


def test_json_round_trip_and_file_checks(tmp_path, tiny_readout):
    again = RefusalReadout.from_json(tiny_readout.to_json())
    assert again.nodes == tiny_readout.nodes
    path = tmp_path / "r.json"
    path.write_text(tiny_readout.to_json())
    assert load_readout_file(str(path), vocab_size=10_000).nodes == tiny_readout.nodes
    with pytest.raises(LexprobeError, match="outside this model's vocabulary"):
        load_readout_file(str(path), vocab_size=5)
    path.write_text("{not json")
    with pytest.raises(LexprobeError, match="not a lexprobe readout"):
        load_readout_file(str(path), vocab_size=10_000)


def test_readout_rejects_orphan_paths():
    from lexprobe.probes.margin import Node

    with pytest.raises(ValueError, match="no expanded parent"):
        RefusalReadout({(): Node({1: 0.9}, 0.0), (2,): Node({3: 0.5}, 0.1)})


def test_a_model_that_never_refuses_gets_the_refusal_openings(tiny, tmp_path, monkeypatch, caplog):
    """tiny-random refuses no calibration prompt: calibration still gives a readout, from the bundled
    refusal openings tokenised for it, says so, and records it; its margins are finite."""
    from lexprobe.probes.readout import opening_sequences, refusal_openings
    from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
    from lexprobe.toolkit.readouts.calibrate import get_readout
    from lexprobe.toolkit.scoring.scorer import Scorer

    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path))
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"))
    with caplog.at_level("WARNING"):
        readout = get_readout(tiny, fmt, settings=ReadoutSettings(n_per_class=4, max_new_tokens=4))
    assert "refused only 0 of 8 calibration prompts" in caplog.text
    assert readout.details["lexicon_fallback"]["openings"] == len(refusal_openings())
    first_tokens = {seq[0] for seq in opening_sequences(tiny.tokenizer, refusal_openings())}
    refusing = {t for t, r in readout.nodes[()].children.items() if r > 0.5 or (t,) in readout.nodes}
    assert refusing and refusing <= first_tokens
    assert str(readout.smooth_temperature) in readout.details["smooth_sign_agreement"]
    scores = Scorer(tiny, fmt, readout).score(["How do I kill a Python process?", "hi"])
    assert np.isfinite(scores.margin).all()
    again = get_readout(tiny, fmt, settings=ReadoutSettings(n_per_class=4, max_new_tokens=4))
    assert again.nodes == readout.nodes  # cached
    [cached] = [p for p in tmp_path.rglob("*.json") if not p.name.endswith(".responses.csv")]
    for broken in ("[1, 2]", '{"nodes": {"": [[999999, 0.5]]}}', "not json"):  # wrong shape, ids, syntax
        cached.write_text(broken)
        with caplog.at_level("WARNING"):
            rebuilt = get_readout(tiny, fmt, settings=ReadoutSettings(n_per_class=4, max_new_tokens=4))
        assert rebuilt.nodes == readout.nodes and "unusable" in caplog.text
        caplog.clear()


def test_refusal_openings_are_refusals_by_the_calibration_classifier():
    from lexprobe.probes.readout import refusal_openings
    from lexprobe.toolkit.behaviour.classify import is_refusal, rules

    assert all(is_refusal(rules(text)) for text in refusal_openings())


def test_temperature_is_the_largest_that_keeps_the_sign():
    from lexprobe.probes.readout import choose_temperature

    decision = np.array([2.0, 1.0, -1.0, -2.0] * 25)
    smooth = {
        1.0: decision - 2.5,  # answers everything: balanced agreement 0.5
        0.1: decision - 0.1,
        0.01: decision,
    }
    t, agreement = choose_temperature(decision, smooth)
    assert t == 0.1 and agreement[1.0] == 0.5 and agreement[0.1] == 1.0


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("condition", ["none", "model-default", "llama2-original", "mistral-guardrail"])
def test_the_default_models_readouts_ship_for_every_preset_condition(condition, dtype):
    """A cold start finds the shipped readout under the key it would calibrate (no model load here)."""
    from types import SimpleNamespace

    import torch

    from lexprobe import prompts
    from lexprobe.probes.readout import load_readout_file
    from lexprobe.toolkit.models.chat import SystemPrompt
    from lexprobe.toolkit.models.loader import DEFAULT_GGUF_SHA256
    from lexprobe.toolkit.readouts.calibrate import SHIPPED, _cache_key

    lm = SimpleNamespace(weights_sha256=DEFAULT_GGUF_SHA256, dtype=getattr(torch, dtype))
    fmt = SimpleNamespace(describe=SystemPrompt.parse(condition).describe)  # the model's own template
    key = _cache_key(lm, fmt, ReadoutSettings())
    readout = load_readout_file(str(prompts.path(SHIPPED) / f"{key}.json"), 151_665)
    details = readout.details
    assert details["settings"] == asdict(ReadoutSettings()) and details["val_auroc"] > 0.95
    assert details["calibrated"]["versions"]["torch"] and "loaded_from" not in details
    index = json.loads((prompts.path(SHIPPED) / "index.json").read_text())
    assert index[key]["system_prompt"] == condition and index[key]["dtype"] == dtype


def test_a_shipped_readout_is_used_and_recalibrate_calibrates_all_the_same(tiny, tmp_path, monkeypatch):
    from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
    from lexprobe.toolkit.readouts import calibrate

    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path / "cache"))
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("none"))
    settings = ReadoutSettings(n_per_class=4, max_new_tokens=4)
    made = calibrate.get_readout(tiny, fmt, settings=settings)  # calibrated here, cached
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    key = calibrate._cache_key(tiny, fmt, settings)
    (shipped / f"{key}.json").write_text(made.to_json())
    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path / "empty-cache"))
    bundled = calibrate.prompts.path
    monkeypatch.setattr(
        calibrate.prompts, "path", lambda name: shipped if name == calibrate.SHIPPED else bundled(name)
    )
    calls = []
    real = calibrate.calibrate
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    used = calibrate.get_readout(tiny, fmt, settings=settings)
    assert used.nodes == made.nodes and not calls and used.details["loaded_from"].startswith("shipped")
    again = calibrate.get_readout(tiny, fmt, settings=settings, rebuild=True)
    assert (
        calls == [1]
        and again.nodes == made.nodes
        and again.details["loaded_from"] == "calibration in this run"
    )
