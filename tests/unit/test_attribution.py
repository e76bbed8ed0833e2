"""Attribution methods on tiny-random: IG completeness, the template and system prompt stay fixed and get
nothing, batched == unbatched, every registered method runs, registry errors."""

import numpy as np
import pytest
import torch

from lexprobe.toolkit.attribution import ATTRIBUTION_METHODS, AttributionSettings, PromptTarget, attribute
from lexprobe.toolkit.errors import LexprobeError
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.scoring.scorer import Scorer

TEXT = "How do I blow up a balloon? Don't wait—café 🙂"


@pytest.fixture(scope="module")
def scorer(tiny, tiny_readout):
    return Scorer(tiny, ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default")), tiny_readout, 8)


def _target(scorer, text=TEXT, **kw):
    return PromptTarget(scorer, text, AttributionSettings(**kw))


@pytest.mark.parametrize(
    "rule, target",
    [("adaptive", "decision"), ("adaptive", "smooth"), ("adaptive", "sampled"), ("gausslegendre", "sampled")],
)
def test_integrated_gradients_is_complete(scorer, rule, target):
    t = _target(scorer, rule=rule, target=target, max_steps=512)
    out = attribute(t, "integrated_gradients")
    info = out.info
    assert info["converged"] and info["completeness_error"] <= 0.05
    gap = info["f_input"] - info["f_baseline"]
    assert abs(out.token_scores.sum() - gap) <= 0.05 * abs(gap)
    # f(x) is the prompt's own margin, computed from token ids
    margins, _ = scorer.margins_for(scorer.batch([t.prompt.input_ids[scorer.prefix_len :]]), temperature=0.2)
    assert info["f_input"] == pytest.approx(float(getattr(margins, target)[0]), abs=1e-4)


def test_baseline_replaces_only_the_user_tokens(scorer, tiny):
    """f(baseline) is the margin of the same chat prompt with only the user tokens set to the pad token:
    template and system prompt are untouched."""
    t = _target(scorer)
    out = attribute(t, "integrated_gradients")
    prompt = t.prompt
    ids = list(prompt.input_ids)
    for i in prompt.user_token_indices:
        ids[i] = tiny.pad_token_id
    margins, _ = scorer.margins_for(scorer.batch([ids[scorer.prefix_len :]]), temperature=0.2)
    assert out.info["f_baseline"] == pytest.approx(float(margins.smooth[0]), abs=1e-4)  # the default target


def test_template_and_system_tokens_never_move_and_get_nothing(scorer, tiny, monkeypatch):
    t = _target(scorer, n_samples=4)
    real = tiny.embed(t._batch.ids)[0]  # [q, d_model]: user tokens, template tail, readout tree
    prefix_before = list(scorer.fmt.prefix_ids)
    seen = []
    original = scorer.margins_for

    def spy(batch, inputs_embeds=None, layers=False, temperature=None):
        if inputs_embeds is not None:
            seen.append(inputs_embeds.detach()[:, t.n_user :])
        else:  # perturbations: every scored suffix still ends with the template tail and tree
            seen.append(batch.ids[:, -(real.shape[0] - t.n_user) :])
        return original(batch, inputs_embeds, layers, temperature)

    monkeypatch.setattr(scorer, "margins_for", spy)
    for method in ("integrated_gradients", "gradient_shap", "input_x_gradient", "occlusion", "shapley"):
        out = attribute(t, method)
        assert out.word_scores.shape == (len(t.words),)
        if out.token_scores is not None:  # one score per *user* token: nothing for template/system
            assert out.token_scores.shape == (t.n_user,)
    tail_ids = t._batch.ids[0, t.n_user :]
    for rest in seen:
        if rest.dtype == torch.long:
            assert (rest == tail_ids).all()
        else:
            torch.testing.assert_close(rest, real[t.n_user :].expand_as(rest))
    assert scorer.fmt.prefix_ids == prefix_before  # the shared prefix (template head + system) is fixed


def test_batched_integrated_gradients_equals_unbatched(scorer):
    one = attribute(_target(scorer, batch_size=1, rule="trapezoid", max_steps=32), "integrated_gradients")
    many = attribute(_target(scorer, batch_size=64, rule="trapezoid", max_steps=32), "integrated_gradients")
    assert one.info["steps"] == many.info["steps"]
    np.testing.assert_allclose(one.token_scores, many.token_scores, atol=1e-4, rtol=1e-4)
    adaptive_one = attribute(_target(scorer, batch_size=1, max_steps=64), "integrated_gradients")
    adaptive_many = attribute(_target(scorer, batch_size=4, max_steps=64), "integrated_gradients")
    for out in (adaptive_one, adaptive_many):  # smaller rounds, same contract
        assert out.info["completeness_error"] <= 0.05 or out.info["steps"] == 64


def test_adaptive_rule_needs_fewer_points_than_uniform(scorer):
    adaptive = attribute(_target(scorer, max_steps=256), "integrated_gradients").info
    uniform = attribute(_target(scorer, rule="trapezoid", max_steps=256), "integrated_gradients").info
    assert adaptive["converged"]
    assert adaptive["points_evaluated"] < uniform["points_evaluated"]


@pytest.mark.parametrize("method", ATTRIBUTION_METHODS.names())
def test_every_method_scores_every_word_deterministically(scorer, method):
    a = attribute(_target(scorer, n_samples=8), method)
    b = attribute(_target(scorer, n_samples=8), method)
    assert a.word_scores.shape == (len(_target(scorer).words),) and np.isfinite(a.word_scores).all()
    np.testing.assert_allclose(a.word_scores, b.word_scores, atol=1e-5)


def test_occlusion_and_shapley_are_exact_where_they_should_be(scorer):
    t = _target(scorer, "kill the lights now")
    occ = attribute(t, "occlusion").word_scores
    n = len(t.words)
    loo = t.margins_of_masks(~np.eye(n, dtype=bool))
    np.testing.assert_allclose(occ, t.margin - loo, atol=1e-6)
    shap = attribute(t, "shapley").word_scores  # efficiency: sums to f(x) - f(no words)
    empty = t.margins_of_masks(np.zeros((1, n), dtype=bool))[0]
    assert shap.sum() == pytest.approx(t.margin - empty, abs=1e-5)


def test_one_word_prompt(scorer):
    t = _target(scorer, "hello")
    for method in ("occlusion", "kernel_shap", "integrated_gradients"):
        assert attribute(t, method).word_scores.shape == (1,)


def test_unknown_method_and_bad_settings_are_bad_input(scorer):
    with pytest.raises(LexprobeError, match="did you mean 'integrated_gradients'"):
        ATTRIBUTION_METHODS.get("integrated_gradient")
    with pytest.raises(LexprobeError, match="unknown attribution target"):
        AttributionSettings(target="greedy")
    with pytest.raises(LexprobeError, match="--ig-rule"):
        AttributionSettings(rule="simpson")
    with pytest.raises(LexprobeError, match="no words"):
        _target(scorer, "   ")


def _step_margin(alphas):
    """f(b + a (x - b)) = 6a + 3 [6a > 1] with x - b of ones [2 tokens, 3 dims]: smooth but for one
    step, which no gradient sees; each token's gradient . (x - b) is 3."""
    a = np.asarray(alphas, dtype=float)
    return 6 * a + 3 * (6 * a > 1), np.full((len(a), 2), 3.0)


def test_a_step_in_the_margin_ends_refinement_and_is_reported():
    from lexprobe.toolkit.attribution.gradient import _trapezoid

    plan = _trapezoid(AttributionSettings(max_steps=256), adaptive=True)
    alphas = next(plan)
    with pytest.raises(StopIteration) as finished:
        while True:
            alphas = plan.send(_step_margin(alphas))
    attr, info = finished.value.value
    assert info["steps"] < 256  # stopped at the step instead of bisecting it forever
    assert attr.sum() == pytest.approx(6.0)  # the gradient part is exact ...
    assert info["jump_error"] == pytest.approx(3 / 9) and info["completeness_error"] == pytest.approx(3 / 9)
