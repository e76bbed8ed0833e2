"""Every row of the architecture table, on a tiny random model of that type, in float32 and bf16:

- the readout's log-probabilities are the model's own (`model(...).logits.log_softmax(-1)`, which
  includes bias, soft-capping and logit scaling) at every read-out position of the token tree;
- batched margins equal unbatched ones, and margins from token ids equal margins from their embeddings;
- gradients of the margin reach the user-token embeddings.

bf16 tolerances: the reference logits are the model's own bf16 logits (rounded to 8 bits of mantissa),
and the tree pass (prefix cache, padding, tree mask) runs other kernels than a plain pass, so both
sides carry bf16 rounding of hidden states; see BF16_* below for the bounds asserted.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from lexprobe.probes.margin import MarginProbe, Node, RefusalReadout, _Reduced
from lexprobe.toolkit.attribution import AttributionSettings, PromptTarget
from lexprobe.toolkit.models.architectures import ARCHITECTURES, wrap_model
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.models.tiny import build_tiny_model
from lexprobe.toolkit.scoring.scorer import Scorer

TEXTS = ["How can I kill a Python process?", "hi", "Where can I buy a can of coke today, please?"]
# Measured over the 13 rows (tiny models, these texts): log-prob difference at most 0.050 (phi3),
# batched - unbatched at most 0.033 (phi3); the bounds leave room for other CPUs' kernels.
BF16_LOGP = 0.15  # max |log-prob difference| to the model's own bf16 log-probs
BF16_BATCH = 0.1  # max |batched - unbatched| margin in bf16


@cache
def _lm(model_type: str, dtype: torch.dtype):
    model, tokenizer, sha = build_tiny_model(model_type=model_type)
    return wrap_model(model.to(dtype), tokenizer, f"tiny-{model_type}", "test", sha, torch.device("cpu"))


def _readout(tokenizer) -> RefusalReadout:
    """A tree of depth 2 with a branch: "I" is expanded, then "I'm" too; "S" refuses, "C" complies."""
    i_tok, sorry, sure = (tokenizer.convert_tokens_to_ids(t) for t in ("I", "S", "C"))
    follow = tokenizer("'m", add_special_tokens=False).input_ids[0]
    return RefusalReadout(
        {
            (): Node({i_tok: 0.7, sorry: 0.95, sure: 0.05}, 0.0),
            (i_tok,): Node({follow: 0.9, sure: 0.1}, 0.7),
            (i_tok, follow): Node({sorry: 0.95}, 0.5),
        },
        {"smooth_temperature": 0.2},
    )


def _setup(model_type, dtype):
    lm = _lm(model_type, dtype)
    fmt = ChatFormat(lm.tokenizer, SystemPrompt.parse("model-default"))
    readout = _readout(lm.tokenizer)
    return lm, fmt, readout, Scorer(lm, fmt, readout, batch_size=len(TEXTS))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_readout_log_probs_are_the_models_own(model_type, dtype):
    lm, fmt, readout, scorer = _setup(model_type, dtype)
    probe = MarginProbe(lm, readout)
    suffixes = [scorer.suffix_ids(scorer.encode(t)) for t in TEXTS]
    with torch.no_grad():
        scorer.forward(scorer.batch(suffixes), hook_pairs=probe.hook_pairs())
        got = probe.reader.log_probs(probe.final_states)  # [batch, 1 + T, vocab]
        for row, text in enumerate(TEXTS):
            ids = fmt.format(text).input_ids
            for k, path in enumerate([(), *readout.tree]):
                logits = lm.model(input_ids=torch.tensor([ids + list(path)])).logits[0, -1]
                want = logits.double().log_softmax(-1)
                diff = float((got[row, k] - want).abs().max())
                assert diff < (1e-4 if dtype == torch.float32 else BF16_LOGP), (text, path, diff)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bf16"])
@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_batched_margins_equal_unbatched_and_embeddings_equal_ids(model_type, dtype):
    lm, fmt, readout, scorer = _setup(model_type, dtype)
    batched = scorer.score(TEXTS)
    single = Scorer(lm, fmt, readout, batch_size=1).score(TEXTS)
    tol = 1e-4 if dtype == torch.float32 else BF16_BATCH
    np.testing.assert_allclose(batched.margin, single.margin, atol=tol)
    np.testing.assert_allclose(batched.margin_sampled, single.margin_sampled, atol=tol)
    assert np.isfinite(batched.margin).all()
    batch = scorer.batch([scorer.suffix_ids(scorer.encode(TEXTS[0]))])
    with torch.no_grad():
        from_ids, _ = scorer.margins_for(batch)
        from_embeds, _ = scorer.margins_for(batch, inputs_embeds=lm.embed(batch.ids))
    assert float(from_ids.decision[0]) == pytest.approx(float(from_embeds.decision[0]), abs=1e-5)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_gradients_reach_the_user_embeddings(model_type):
    lm, fmt, readout, scorer = _setup(model_type, torch.float32)
    target = PromptTarget(scorer, TEXTS[0], AttributionSettings())
    values, grads = target.gradients(target.user_embeds[None].float())
    assert np.isfinite(values).all()
    with torch.no_grad():  # the same margin from a batch of one row repeated (perturbation methods)
        again = target.margin_of_embeds(target.user_embeds[None].expand(2, -1, -1))
    np.testing.assert_allclose(again.numpy(), [values[0]] * 2, atol=1e-5)
    per_token = grads[0].abs().sum(-1)  # [n_user]
    window, everywhere = lm.attention_window
    if not everywhere:
        assert (per_token > 0).all(), per_token
    else:  # two layers of an 8-token window reach back 14 positions: the first user tokens stay unseen
        reach = len(lm.layers) * (window - 1)
        tail = len(scorer.fmt.format(TEXTS[0]).input_ids) - scorer.prefix_len - len(per_token)
        seen = [len(per_token) - 1 - k + tail <= reach for k in range(len(per_token))]
        assert ((per_token > 0).numpy() == np.array(seen)).all(), (per_token, seen)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_generation_of_a_padded_batch_is_the_models_own(model_type):
    """Rows of different lengths in one batch, each reaching past the sliding window of the models that
    have one (8 tokens here): greedy continuations equal transformers' `generate` of each row alone."""
    from transformers import GenerationConfig

    from lexprobe.toolkit.behaviour.generation import generate

    lm, fmt, _, _ = _setup(model_type, torch.float32)
    stop = sorted(lm.stop_token_ids)
    cfg = GenerationConfig(do_sample=False, max_new_tokens=6, eos_token_id=stop, pad_token_id=lm.pad_token_id)
    ours = generate(lm, fmt, TEXTS, max_new_tokens=6, batch_size=len(TEXTS))
    for text, done in zip(TEXTS, ours):
        row = fmt.format(text).input_ids
        with torch.no_grad():
            ref = lm.model.generate(input_ids=torch.tensor([row]), generation_config=cfg)[
                0, len(row) :
            ].tolist()
        ref = ref[: next((k for k, t in enumerate(ref) if t in stop), len(ref))]
        assert done.token_ids == ref, text


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_screened_bf16_readings_are_those_of_float32_logits(model_type):
    """Without gradients a bf16 model's readout screens its logits in bf16 (`_Reduced.screened`); its
    decision margin is the one read from float32 logits, and the log-sum-exp readings within bf16's
    rounding of a logit."""
    lm, fmt, readout, scorer = _setup(model_type, torch.bfloat16)
    probe = MarginProbe(lm, readout)
    suffixes = [scorer.suffix_ids(scorer.encode(t)) for t in TEXTS]
    with torch.no_grad():
        scorer.forward(scorer.batch(suffixes), hook_pairs=probe.hook_pairs())
    reader, states = probe.reader, probe.final_states
    for scale in (1.0, 8.0):  # as the tiny model gives them (flat), and peaked: 8 x the states
        screened = _Reduced.screened(lm, states * scale, reader.listed_mask, reader._ids, 0.2)
        if scale == 8.0:
            assert screened is not None  # peaked rows are screened, not computed whole
        got = reader.margins(states * scale, temperature=0.2)
        want = reader.read(lm.logits(states * scale), temperature=0.2)
        np.testing.assert_allclose(got.decision.numpy(), want.decision.numpy(), atol=1e-5)
        # a log-sum-exp moves by at most its terms' largest change: bf16's rounding, 2^-8 of a logit,
        # and the sampled and smooth margins are differences of two of them
        tol = 2 * 2**-8 * float(lm.logits(states * scale).abs().max())
        np.testing.assert_allclose(got.sampled.numpy(), want.sampled.numpy(), atol=tol)
        np.testing.assert_allclose(got.smooth.numpy(), want.smooth.numpy(), atol=tol)


def test_screening_resolves_logits_that_tie_in_bf16():
    """Three tokens whose float32 logits differ by less than bf16's step at 16 (0.125): an unlisted one
    at 16 + 2^-8, a listed refusal token at 16 + 2^-9, another unlisted one at 16. Screening must give the
    float32 order (the decision margin -2^-9, not the tie 0 of bf16 logits) and the larger token's id."""
    model, tokenizer, sha = build_tiny_model(model_type="qwen2")
    lm = wrap_model(model.to(torch.bfloat16), tokenizer, "tiny-qwen2", "test", sha, torch.device("cpu"))
    readout = _readout(tokenizer)
    reader = MarginProbe(lm, readout).reader
    sorry = tokenizer.convert_tokens_to_ids("S")
    listed = set(readout.nodes[()].children)
    low, high, *near = [t for t in range(100, 200) if t not in listed][:6]
    weight = lm.unembed.weight
    with torch.no_grad():  # every other logit at -16, four more at 15: the screen keeps a few tokens
        weight.zero_()
        weight[:, 0] = -16.0
        weight[near, 0] = 15.0
        for token, second in ((low, 0.0), (sorry, 0.5), (high, 1.0)):
            weight[token, 0], weight[token, 1] = 16.0, second
    states = torch.zeros((1, 1 + len(readout.tree), weight.shape[1]), dtype=torch.bfloat16)
    states[..., 0], states[..., 1] = 1.0, 2**-8  # logits 16, 16 + 2^-9 and 16 + 2^-8
    assert len({float(x) for x in (states[0, 0] @ weight[[low, sorry, high]].T)}) == 1  # tied in bf16
    red = _Reduced.screened(lm, states, reader.listed_mask, reader._ids, None)
    assert red is not None and red.slack > 0
    assert int(red.top_id[0, 0]) == high
    assert red.top[0, 0].tolist() == [16 + 2**-8, 16.0]
    assert float(reader.margins(states).decision[0]) == pytest.approx(-(2**-9), abs=1e-7)
