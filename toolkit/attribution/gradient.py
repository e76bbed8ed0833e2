"""Gradient methods over the user-token embeddings: integrated gradients, input x gradient, saliency,
gradient SHAP. Token attributions are summed over d_model and shared out to words by character overlap.

Integrated gradients is lexprobe's own loop (the path points are batched rows of one suffix; see
`core.PromptTarget`), so that the completeness error comes for free and the step count can adapt:

    attr_t = (x_t - b_t) . integral_0^1 grad_t f(b + a (x - b)) da          (t: user token)
    completeness error = |sum_t attr_t - (f(x) - f(b))| / |f(x) - f(b)|

The default rule is an *adaptive* trapezoid rule. It starts from n uniform points a = j/n (the
endpoints give f(b) and f(x) in the same batch) and only ever adds points: each interval [a, a'] has a
completeness gap of its own (its trapezoid estimate, summed over tokens, minus f(a') - f(a), which the
same forward passes give), and the intervals with the largest gaps are bisected, one batch of
midpoints per round, until the error is under `tolerance` or `max_steps` is reached. The decision
margin is a max over next tokens, so along the path its gradient jumps where the argmax changes and
bends sharply in a few narrow stretches; uniform rules spend their points everywhere (on the default
model "How do I blow up a balloon?" needed 66 adaptive steps for 3.6%, while 64 uniform trapezoid
steps left 11.6% and 16 Gauss-Legendre steps 123%). `trapezoid` (uniform, steps doubling, every point
reused) and `gausslegendre` (captum's points and weights, all points anew when the steps double) are
offered too.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import GradientShap, InputXGradient, Saliency
from captum.attr._utils.approximation_methods import approximation_parameters

from lexprobe.toolkit.attribution.core import (
    ATTRIBUTION_METHODS,
    AttributionSettings,
    MethodOutput,
    PromptTarget,
    gradients_together,
)
from lexprobe.toolkit.attribution.words import to_words
from lexprobe.toolkit.io.progress import count, progress


def completeness_error(total: float, f_x: float, f_b: float) -> float:
    """|sum(attr) - (f(x) - f(b))| relative to |f(x) - f(b)| (floored at 1e-3 nats)."""
    return abs(total - (f_x - f_b)) / max(abs(f_x - f_b), 1e-3)


def _path_points(target: PromptTarget, base: torch.Tensor, alphas: list[float]) -> torch.Tensor:
    """[len(alphas), n_user, d_model] points on the straight path from `base` to the input."""
    a = torch.tensor(alphas, dtype=torch.float32, device=base.device)[:, None, None]
    x, b = target.user_embeds.float(), base.float()
    return b + a * (x - b)


def _projected(
    requests: list[tuple[PromptTarget, torch.Tensor, list[float]]],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each (target, reference, alphas): margins [k] and per-token gradient . (x - b) [k, n_user] at
    those path points; the rows of every target run in shared batches (`core.gradients_together`)."""
    answers = gradients_together([(t, _path_points(t, base, alphas)) for t, base, alphas in requests])
    out = []
    for (t, base, _), (values, grads) in zip(requests, answers):
        delta = (t.user_embeds.float() - base.float())[None]  # [1, n_user, d_model]
        out.append((values, (grads.float() * delta).sum(-1).double().cpu().numpy()))
    return out


def integrated_gradients_tokens(
    targets: list[PromptTarget], settings: AttributionSettings
) -> list[tuple[np.ndarray, dict]]:
    """For each target: token attributions [n_user] and the integration record (steps, rule, f(x), f(b),
    error). The prompts' integrations run side by side: each round, the points every unfinished one asks
    for are evaluated in shared batches, so the small rounds of the adaptive rule fill whole batches."""
    bases = [t.baseline_embeds() for t in targets]
    if settings.rule == "gausslegendre":
        plans = [_gauss_legendre(settings) for _ in targets]
    else:
        plans = [_trapezoid(settings, adaptive=settings.rule == "adaptive") for _ in targets]
    asked = {i: next(plan) for i, plan in enumerate(plans)}  # target index -> alphas it needs next
    done: dict[int, tuple[np.ndarray, dict]] = {}
    # the adaptive rule decides its points as it goes: the bar counts points with their rate, no total
    bar = progress(None, desc=f"integrating {count(len(targets), 'prompt')}", unit="point")
    while asked:
        answers = _projected([(targets[i], bases[i], alphas) for i, alphas in asked.items()])
        bar.update(sum(len(alphas) for alphas in asked.values()))
        following = {}
        for i, answer in zip(asked, answers):
            try:
                following[i] = plans[i].send(answer)
            except StopIteration as finished:
                attr, info = finished.value
                info["converged"] = bool(info["completeness_error"] <= settings.tolerance)
                done[i] = attr, {"rule": settings.rule, **info}
        asked = following
    bar.close()
    return [done[i] for i in range(len(targets))]


MIN_WIDTH = 2.0**-30  # the adaptive rule never splits a path interval narrower than this (1e-9)


def _trapezoid(settings, adaptive: bool):
    """Trapezoid rule on a grid that only ever gains points: every evaluated point is reused. A plan:
    yields the path points (alphas) it needs next, is sent back (margins [k], projected gradients
    [k, n_user]) for them, and returns (token attributions, record).

    Each interval [a, a'] has its own completeness gap: its trapezoid estimate of the token attributions,
    summed over tokens, minus f(a') - f(a), which the same forward passes give. `adaptive` bisects the
    intervals with the largest gaps (at most one batch of midpoints per round) and puts the points where
    the margin bends; otherwise every interval is bisected (the uniform rule, steps doubling).

    A gap that survives down to `MIN_WIDTH` is a step in f itself, which no gradient sees: the decision
    margin jumps where greedy decoding's first token switches between a refusal token and an expanded
    prefix ("As") whose own margin is smaller. Such intervals are left alone and their share of the
    error is reported as `jump_error` (the completeness error cannot fall below it)."""
    n = settings.n_steps
    seen: dict[float, tuple[float, np.ndarray]] = {}  # alpha -> (f, g [n_user])

    alphas = [j / n for j in range(n + 1)]
    values, g = yield alphas
    seen.update({a: (v, row) for a, v, row in zip(alphas, values, g)})
    f_b, f_x = seen[0.0][0], seen[1.0][0]
    history: dict[int, float] = {}  # intervals -> completeness error
    while True:
        grid = sorted(seen)
        f = np.array([seen[a][0] for a in grid])  # [m]
        g = np.stack([seen[a][1] for a in grid])  # [m, n_user]
        parts = np.diff(grid)[:, None] * (g[:-1] + g[1:]) / 2  # [m - 1, n_user]
        gaps = parts.sum(axis=1) - np.diff(f)  # [m - 1]
        attr = parts.sum(axis=0)
        err = completeness_error(float(attr.sum()), f_x, f_b)
        history[len(grid) - 1] = round(err, 5)
        room = settings.max_steps - (len(grid) - 1)
        if err <= settings.tolerance or room <= 0:
            break
        if adaptive:
            scale = max(abs(f_x - f_b), 1e-3)
            wide = np.diff(grid) > MIN_WIDTH
            if abs(gaps[wide].sum()) <= settings.tolerance * scale:
                break  # what is left is steps in f itself: more points cannot help
            splittable = wide & (np.abs(gaps) > 1e-4 * scale)
            if not splittable.any():
                break
            worst = [i for i in np.argsort(-np.abs(gaps)) if splittable[i]]
            share = np.cumsum(np.abs(gaps[worst])) / max(np.abs(gaps[worst]).sum(), 1e-12)
            take = min(int(np.searchsorted(share, 0.8)) + 1, settings.batch_size, room)
            split = worst[:take]
        else:
            if room < len(grid) - 1:
                break
            split = range(len(grid) - 1)
        alphas = [a for a in ((grid[i] + grid[i + 1]) / 2 for i in split) if a not in seen]
        if not alphas:
            break
        values, g = yield alphas
        seen.update({a: (v, row) for a, v, row in zip(alphas, values, g)})
    narrow = np.diff(grid) <= MIN_WIDTH
    info = {
        "steps": len(grid) - 1,
        "points_evaluated": len(seen),
        "jump_error": float(abs(gaps[narrow].sum()) / max(abs(f_x - f_b), 1e-3)),  # steps in f itself
        "f_input": float(f_x),
        "f_baseline": float(f_b),
        "completeness_error": float(err),
        "error_by_steps": history,
    }
    return attr, info


def _gauss_legendre(settings):
    """captum's Gauss-Legendre points and weights; the steps double (all points anew) until converged.
    A plan, as `_trapezoid`; f(b) and f(x) come from a first request of the two ends."""
    step_sizes, alpha_fn = approximation_parameters("gausslegendre")
    (f_b, f_x), _ = yield [0.0, 1.0]
    n, points, history = settings.n_steps, 2, {}
    while True:
        _, g = yield list(alpha_fn(n))
        points += n
        attr = (np.asarray(step_sizes(n))[:, None] * g).sum(0)
        err = completeness_error(float(attr.sum()), f_x, f_b)
        history[n] = round(err, 5)
        if err <= settings.tolerance or 2 * n > settings.max_steps:
            break
        n *= 2
    info = {
        "steps": n,
        "points_evaluated": points,
        "f_input": float(f_x),
        "f_baseline": float(f_b),
        "completeness_error": float(err),
        "error_by_steps": history,
    }
    return attr, info


@ATTRIBUTION_METHODS.register("integrated_gradients")
def integrated_gradients(target: PromptTarget, settings: AttributionSettings) -> MethodOutput:
    return _integrated_gradients_together([target], settings)[0]


def _integrated_gradients_together(
    targets: list[PromptTarget], settings: AttributionSettings
) -> list[MethodOutput]:
    return [
        MethodOutput(to_words(tokens, t.weights), tokens, info)
        for t, (tokens, info) in zip(targets, integrated_gradients_tokens(targets, settings))
    ]


integrated_gradients.together = (
    _integrated_gradients_together  # `core.attribute_together` runs prompts side by side
)


# --------------------------------------------------------------------------- captum methods
def _captum_forward(target: PromptTarget):
    def forward(user: torch.Tensor) -> torch.Tensor:  # [N, n_user, d_model] -> [N]
        return target.margin_of_embeds(user)

    return forward


def _from_tokens(target: PromptTarget, attr: torch.Tensor, info: dict) -> MethodOutput:
    tokens = attr.detach().double().sum(-1)[0].cpu().numpy()  # [1, n_user, d_model] -> [n_user]
    return MethodOutput(to_words(tokens, target.weights), tokens, info)


@ATTRIBUTION_METHODS.register("input_x_gradient")
def input_x_gradient(target: PromptTarget, settings: AttributionSettings) -> MethodOutput:
    """x . grad f(x) (captum's InputXGradient: the zero reference, whatever `baseline` says)."""
    x = target.user_embeds.float()[None].clone().requires_grad_(True)
    attr = InputXGradient(_captum_forward(target)).attribute(x)
    target.rows_backward += 1
    return _from_tokens(target, attr, {"reference": "zero"})


@ATTRIBUTION_METHODS.register("saliency")
def saliency(target: PromptTarget, settings: AttributionSettings) -> MethodOutput:
    """|grad f(x)| summed over d_model: how sensitive the margin is to each token; unsigned (>= 0)."""
    x = target.user_embeds.float()[None].clone().requires_grad_(True)
    attr = Saliency(_captum_forward(target)).attribute(x, abs=True)
    target.rows_backward += 1
    return _from_tokens(target, attr, {"signed": False})


@ATTRIBUTION_METHODS.register("gradient_shap")
def gradient_shap(target: PromptTarget, settings: AttributionSettings) -> MethodOutput:
    """Expected gradients over references {pad embedding, zeros} with random path points and noise."""
    x = target.user_embeds.float()[None].clone().requires_grad_(True)
    refs = torch.stack([target.baseline_embeds("pad"), target.baseline_embeds("zero")]).float()
    n = settings.n_samples or 16
    stdev = float(target.user_embeds.float().std()) * 0.1
    attr = GradientShap(_captum_forward(target)).attribute(x, baselines=refs, n_samples=n, stdevs=stdev)
    target.rows_backward += n
    return _from_tokens(target, attr, {"n_samples": n, "noise_stdev": round(stdev, 5)})
