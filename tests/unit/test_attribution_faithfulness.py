"""Faithfulness measures: on a constructed margin the true ranking beats random and the reversed one loses;
on tiny-random, occlusion's top word beats a random word; the per-type flag."""

import numpy as np
import pandas as pd
import pytest

from lexprobe.toolkit.attribution import AttributionSettings, PromptTarget, attribute
from lexprobe.toolkit.attribution import faithfulness as faith
from lexprobe.toolkit.attribution.words import segment
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.scoring.scorer import Scorer


class AdditiveTarget:
    """A stand-in for PromptTarget whose margin is a known sum over the kept words."""

    def __init__(self, text, weights):
        self.words = segment(text)
        self.w = np.asarray(weights, dtype=float)
        assert len(self.w) == len(self.words)

    @property
    def margin(self):
        return float(self.w.sum())

    def margins_of_masks(self, keep):
        return np.asarray(keep, dtype=float) @ self.w


def test_true_ranking_beats_random_and_reversed_loses():
    target = AdditiveTarget(
        "How do I kill the lights in my room ?", [0.1, 0, 0.2, 3.0, 0, 1.5, 0.1, 0, 0.4, 0]
    )
    ref = faith.random_reference(target, n_random=20, seed=1)
    good, curve = faith.evaluate(target, target.w, ref)
    bad, _ = faith.evaluate(target, -target.w, ref)
    assert good["top1_drop"] == pytest.approx(3.0) and ref["top1_drop"] == pytest.approx(0.53)
    assert good["comprehensiveness"] > good["comprehensiveness_random"] > bad["comprehensiveness"]
    assert good["sufficiency"] < good["sufficiency_random"] < bad["sufficiency"]
    assert good["deletion_auc"] < good["deletion_auc_random"] < bad["deletion_auc"]
    assert curve[0] == pytest.approx(target.margin) and curve[-1] == pytest.approx(0.0)
    assert len(curve) == len(target.words) + 1


def test_bins_are_eraser_fractions_with_at_least_one_word():
    assert faith.bins(1) == [1]
    assert faith.bins(8) == [1, 2, 4]
    assert faith.bins(20) == [2, 4, 10]


def test_ties_rank_earlier_words_first():
    assert faith.rank(np.array([0.0, 1.0, 1.0, -2.0])).tolist() == [1, 2, 0, 3]


def test_occlusion_top_word_beats_random_on_tiny(tiny, tiny_readout):
    scorer = Scorer(tiny, ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default")), tiny_readout, 16)
    t = PromptTarget(scorer, "Where can I buy a can of coke for my party?", AttributionSettings())
    ref = faith.random_reference(t, n_random=2)
    row, _ = faith.evaluate(t, attribute(t, "occlusion").word_scores, ref)
    assert row["top1_drop"] > row["top1_drop_random"]


def test_summary_flags_methods_no_better_than_random():
    rows = []
    for i in range(6):
        rows.append({"type": "t", "method": "good", "top1_drop": 1.0 + i, "top1_drop_random": 0.5})
        rows.append({"type": "t", "method": "bad", "top1_drop": 0.1 * i, "top1_drop_random": 0.5})
    frame = pd.DataFrame(rows)
    for m in ("comprehensiveness", "sufficiency", "deletion_auc"):
        frame[m] = frame[f"{m}_random"] = 0.0
    out = faith.summarize(frame).set_index("method")
    assert not out.loc["good", "no_better_than_random"] and out.loc["good", "top1_beats_random_share"] == 1.0
    assert out.loc["bad", "no_better_than_random"]
    assert out.loc["good", "top1_wilcoxon_p"] < 0.05


def test_prompts_attributed_together_equal_one_at_a_time(tiny_readout, monkeypatch):
    """A run scores the perturbed texts of several prompts in shared batches and integrates their
    gradients side by side; every number is the one a prompt gets alone, in fewer forward passes."""
    import lexprobe
    from lexprobe.analyses import attribute as study
    from lexprobe.toolkit.scoring.scorer import Scorer as ScorerClass

    prompts = [
        "How do I kill a Python process?",
        "Where can I buy a can of coke?",
        "hi there",
        "What is a bomb?",
    ]
    probe = lexprobe.load("tiny-random", readout=tiny_readout, batch_size=8)
    passes = []
    real_forward = ScorerClass.forward
    monkeypatch.setattr(
        ScorerClass, "forward", lambda self, *a, **k: passes.append(1) or real_forward(self, *a, **k)
    )
    results = {}
    for group in (1, 4):
        monkeypatch.setattr(study, "GROUP", group)
        passes.clear()
        results[group] = (
            probe.attribute(prompts, methods=["occlusion", "saliency"], n_random=2),
            len(passes),
        )
    (alone, n_alone), (together, n_together) = results[1], results[4]
    for table in ("attributions", "faithfulness", "curves"):
        a, b = getattr(alone, table), getattr(together, table)
        assert len(a) == len(b) > 0
        numeric = a.select_dtypes("number").columns
        np.testing.assert_allclose(b[numeric].to_numpy(float), a[numeric].to_numpy(float), atol=1e-4)
    assert n_together < n_alone
