"""Steering hooks on tiny-random: directional ablation leaves no component along the direction at any
block's input or at the final residual, activation addition adds exactly its vector at its block, the
hooks go even when the pass fails, and a prefix cache computed unsteered is not reused steered."""

from __future__ import annotations

import pytest
import torch

from lexprobe.probes.hooks import output_tensor
from lexprobe.probes.steering import Steering, steered
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.scoring.scorer import Scorer

TEXTS = [
    "How can I kill a Python process?",
    "Where can I buy a can of coke?",
    "What is the capital of France?",
]


@pytest.fixture(scope="module")
def scorer(tiny, tiny_readout):
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"))
    return Scorer(tiny, fmt, tiny_readout, batch_size=2)


def _direction(lm, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(lm.text_config.hidden_size, generator=g)


def _residuals(scorer, texts):
    """Every block's input and the final residual ([n_layers + 1] tensors [batch, seq, d]) of one pass."""
    lm = scorer.lm
    seen = []
    pairs = [(m, lambda _m, _i, out: seen.append(output_tensor(out).clone())) for m in [lm.embed, *lm.layers]]
    suffixes = [scorer.suffix_ids(scorer.encode(t)) for t in texts]
    with torch.no_grad():
        scorer.forward(scorer.batch(suffixes), hook_pairs=pairs)
    return seen


def test_ablation_leaves_no_component_along_the_direction(scorer):
    d = _direction(scorer.lm)
    unit = d / d.norm()
    before = _residuals(scorer, TEXTS)
    assert max(float((h @ unit).abs().max()) for h in before) > 0.1  # there was something to remove
    with steered(scorer.lm, Steering(d, ablate=1.0)):
        after = _residuals(scorer, TEXTS)
    assert len(after) == len(scorer.lm.layers) + 1
    for h in after:
        assert float((h @ unit).abs().max()) < 1e-4


def test_partial_ablation_removes_its_share_at_the_embedding(scorer):
    d = _direction(scorer.lm, 1)
    unit = d / d.norm()
    whole = _residuals(scorer, TEXTS)[0] @ unit
    with steered(scorer.lm, Steering(d, ablate=0.25)):
        part = _residuals(scorer, TEXTS)[0] @ unit
    torch.testing.assert_close(part, 0.75 * whole, atol=1e-5, rtol=1e-5)


def test_addition_adds_the_vector_at_its_block_only(scorer):
    d = _direction(scorer.lm, 2)
    before = _residuals(scorer, TEXTS)
    with steered(scorer.lm, Steering(d, add=2.0, at=1)):
        after = _residuals(scorer, TEXTS)
    torch.testing.assert_close(after[0], before[0])  # upstream of block 1: untouched
    torch.testing.assert_close(after[1], before[1] + 2.0 * d, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(after[2], before[2])  # downstream: changed by what block 1 made of it


def test_hooks_are_removed_after_an_exception(scorer):
    lm = scorer.lm
    counts = [len(m._forward_hooks) for m in [lm.embed, *lm.layers]]
    with pytest.raises(RuntimeError, match="boom"), steered(lm, Steering(_direction(lm), ablate=1.0)):
        assert [len(m._forward_hooks) for m in [lm.embed, *lm.layers]] != counts
        raise RuntimeError("boom")
    assert [len(m._forward_hooks) for m in [lm.embed, *lm.layers]] == counts
    assert "steering" not in lm.extra


def test_a_steered_scorer_does_not_reuse_an_unsteered_prefix(tiny, tiny_readout, scorer):
    steering = Steering(_direction(tiny, 3), ablate=1.0)
    plain = scorer.score(TEXTS).margin  # the prefix cache is filled unsteered
    with steered(tiny, steering):
        reused = scorer.score(TEXTS).margin
        fresh = Scorer(tiny, scorer.fmt, tiny_readout, batch_size=2).score(TEXTS).margin
    assert abs(reused - plain).max() > 1e-3
    assert abs(reused - fresh).max() < 1e-5
    assert abs(scorer.score(TEXTS).margin - plain).max() < 1e-5  # and unsteered again after


def test_a_zero_or_broken_direction_is_refused():
    with pytest.raises(ValueError, match="zero vector"):
        Steering(torch.zeros(8), ablate=1.0)
    with pytest.raises(ValueError, match="block it adds at"):
        Steering(torch.ones(8), add=1.0)
    with pytest.raises(ValueError, match="finite"):
        Steering(torch.tensor([1.0, float("nan")]), ablate=1.0)
