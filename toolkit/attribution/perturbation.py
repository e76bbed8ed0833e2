"""Perturbation methods over the user's WORDS (captum): occlusion (leave one word out), Shapley value
sampling, KernelSHAP and LIME.

A perturbation is a keep/drop mask over the words; the perturbed prompt is the user text with the
dropped words deleted (or replaced by `settings.replacement`, e.g. "something"), formatted under the
same template and system prompt, and scored in batches with the shared-prefix `Scorer`. Every text is
scored once per prompt (`PromptTarget` memoises), so methods that revisit coalitions pay once.

Captum sees an input of ones [1, n_words] with a baseline of zeros and one feature per word; its
forward function receives [N, n_words] masks and returns [N] margins.
"""

from __future__ import annotations

import numpy as np
import torch
from captum.attr import FeatureAblation, KernelShap, Lime, ShapleyValueSampling

from lexprobe.toolkit.attribution.core import (
    ATTRIBUTION_METHODS,
    AttributionSettings,
    MethodOutput,
    PromptTarget,
)


def _mask_forward(target: PromptTarget):
    def forward(masks: torch.Tensor) -> torch.Tensor:  # [N, n_words] in {0, 1} -> [N]
        keep = masks.detach().cpu().numpy() > 0.5
        return torch.tensor(target.margins_of_masks(keep), dtype=torch.float64)

    return forward


def _run(target: PromptTarget, method, info: dict, **kwargs) -> MethodOutput:
    n = len(target.words)
    before = len(target._memo)
    if n == 1:  # one feature: every method's answer is f(x) - f(without it)
        scores = np.array([target.margin - target.margins_of_masks(np.zeros((1, 1), bool))[0]])
    else:
        inputs = torch.ones((1, n), dtype=torch.float64)
        attr = method(_mask_forward(target)).attribute(
            inputs,
            baselines=0.0,
            feature_mask=torch.arange(n)[None],
            perturbations_per_eval=target.settings.batch_size,
            **kwargs,
        )
        scores = attr.detach().double()[0].cpu().numpy()
    info = {**info, "texts_scored": len(target._memo) - before, "replacement": target.settings.replacement}
    return MethodOutput(scores, None, info)


@ATTRIBUTION_METHODS.register("occlusion")
def occlusion(target: PromptTarget, settings: AttributionSettings) -> MethodOutput:
    """f(x) - f(x without word i), for each word i (leave one out)."""
    return _run(target, FeatureAblation, {})


@ATTRIBUTION_METHODS.register("shapley")
def shapley(target: PromptTarget, settings: AttributionSettings) -> MethodOutput:
    """Shapley values estimated from `n_samples` random word orders (default 8); efficient: they sum to
    f(x) - f(no words)."""
    n = settings.n_samples or 8
    return _run(target, ShapleyValueSampling, {"n_samples": n}, n_samples=n)


@ATTRIBUTION_METHODS.register("kernel_shap")
def kernel_shap(target: PromptTarget, settings: AttributionSettings) -> MethodOutput:
    """KernelSHAP: a Shapley-kernel weighted linear fit on `n_samples` random coalitions (default 64)."""
    n = settings.n_samples or 64
    return _run(target, KernelShap, {"n_samples": n}, n_samples=n)


@ATTRIBUTION_METHODS.register("lime")
def lime(target: PromptTarget, settings: AttributionSettings) -> MethodOutput:
    """LIME: a lasso fit on `n_samples` random coalitions (default 64), weighted by closeness to x."""
    n = settings.n_samples or 64
    return _run(target, Lime, {"n_samples": n}, n_samples=n)
