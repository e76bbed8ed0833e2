"""The embedded default model (Qwen2.5-Coder-0.5B-Instruct GGUF): loading, readout, real margins."""

import functools
import json
from dataclasses import replace

import numpy as np
import pytest

from lexprobe.toolkit.behaviour.classify import classify, is_refusal
from lexprobe.toolkit.behaviour.generation import generate
from lexprobe.toolkit.errors import LexprobeError
from lexprobe.toolkit.io.suites import load_suite
from lexprobe.toolkit.models import loader as models
from lexprobe.toolkit.scoring.scorer import Scorer

pytestmark = pytest.mark.slow


def test_default_model_loads_from_a_verified_cache(default_lm):
    assert default_lm.weights_sha256 == models.DEFAULT_GGUF_SHA256
    assert default_lm.model.config.model_type == "qwen2" and len(default_lm.layers) == 24
    directory = models.cache_dir("models") / models.DEFAULT_GGUF_SHA256
    assert models._cache_is_valid(directory, models.DEFAULT_GGUF_SHA256)
    manifest = json.loads((directory / models.MANIFEST).read_text())
    assert manifest["files"]["model.safetensors"]["size"] > 2_000_000_000  # float32, dequantized


def test_wrong_gguf_checksum_is_refused(monkeypatch, tmp_path):
    wrong = replace(models.SPLIT_GGUFS["default"], sha256="0" * 64)
    monkeypatch.setitem(models.SPLIT_GGUFS, "default", wrong)
    with pytest.raises(LexprobeError, match="expected 491400064 bytes with sha256 0000"):
        models._assemble_split("default", tmp_path / "m.gguf")


def test_partial_cache_is_rebuilt_not_used(monkeypatch, tmp_path):
    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path))
    broken = tmp_path / "models" / models.DEFAULT_GGUF_SHA256
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{}")  # what a crash mid-build could leave
    directory = models._dequantized_cache(
        models.DEFAULT_GGUF_SHA256, functools.partial(models._assemble_split, "default")
    )
    assert models._cache_is_valid(directory, models.DEFAULT_GGUF_SHA256)
    assert not list(directory.glob("*.gguf"))  # the assembled GGUF is not kept


def test_readout_was_calibrated_without_xstest(default_session):
    ro = default_session.readout
    details = ro.details
    assert details["val_auroc"] >= 0.9  # held-out calibration prompts, not XSTest
    xstest = set(load_suite("xstest").frame["prompt"])
    assert details["train_prompts"] == 256
    tok = default_session.lm.tokenizer
    root = ro.nodes[()]
    refusing = {tok.decode([t]) for t, r in root.children.items() if r > 0.5}
    assert "I" in refusing  # "I'm sorry, but I can't assist with that."
    assert not xstest & set(load_suite("calibration-harmful").frame["prompt"])


def test_batched_equals_unbatched_on_the_default_model(default_session):
    s = default_session
    texts = load_suite("xstest").frame["prompt"].tolist()[::50]
    batched = Scorer(s.lm, s.fmt, s.readout, batch_size=len(texts)).score(texts)
    single = Scorer(s.lm, s.fmt, s.readout, batch_size=1).score(texts)
    np.testing.assert_allclose(batched.margin, single.margin, atol=1e-4)


def test_margin_sign_predicts_greedy_refusal(default_session):
    s = default_session
    frame = load_suite("xstest").frame.iloc[::45]  # 10 prompts across types
    texts = frame["prompt"].tolist()
    scores = Scorer(s.lm, s.fmt, s.readout).score(texts)
    completions = generate(s.lm, s.fmt, texts, max_new_tokens=32)
    refused = np.array([is_refusal(x) for x in classify([c.text for c in completions], texts, name="rules")])
    assert 0 < refused.sum() < len(texts)  # the sample has both behaviours
    assert ((scores.margin > 0) == refused).mean() >= 0.8


def test_validate_margin_on_a_sample_of_xstest(tmp_path, default_session):
    from lexprobe.analyses.margin_validity import ValidityConfig, run
    from lexprobe.analyses.options import ModelOptions, SuiteOptions

    ids = [str(i) for i in range(1, 451, 19)]  # 24 prompts across all types
    cfg = ValidityConfig(
        out=str(tmp_path / "v"),
        model=ModelOptions(model="default", dtype="float32"),
        suite=SuiteOptions(ids=ids),
        max_new_tokens=64,
        save=False,
    )
    result = run(cfg)
    s = result.summary
    assert s["n"] == 24 and 0 < s["refusal_rate"] < 1
    assert s["auroc"] >= 0.85  # 0.984 on all 450 prompts with 128 new tokens (docs/margin.md)
    assert s["auroc_ci95"][0] <= s["auroc"] <= s["auroc_ci95"][1]
    assert (tmp_path / "v" / "reliability.png").exists()
