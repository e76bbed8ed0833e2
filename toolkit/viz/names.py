"""Human names for figure titles and labels: model specs, bundled completion sets, label columns,
attribution methods and XSTest prompt types. The one place that maps lexprobe's internal names to the
names a reader of a paper expects; every figure title goes through `display_name`."""

from __future__ import annotations

import re
from pathlib import PurePath

MODELS = {
    "default": "Qwen2.5-Coder-0.5B-Instruct",
    "smollm2": "SmolLM2-135M-Instruct",
    "gemma3": "Gemma-3-270M (base)",
    "tiny-random": "tiny random test model",
    "llama2orig": "Llama-2-70b-chat (XSTest paper, original system prompt)",
    "xstest-llama2orig": "Llama-2-70b-chat (XSTest paper, original system prompt)",
    "mistralguard": "Mistral-7B-Instruct (XSTest paper, guardrail prompt)",
    "xstest-mistralguard": "Mistral-7B-Instruct (XSTest paper, guardrail prompt)",
}
LABEL_COLUMNS = {"final_label": "human labels", "predicted": "classifier labels"}
METHODS = {
    "integrated_gradients": "integrated gradients",
    "input_x_gradient": "input × gradient",
    "saliency": "saliency",
    "gradient_shap": "gradient SHAP",
    "occlusion": "occlusion",
    "shapley": "Shapley values",
    "kernel_shap": "kernel SHAP",
    "lime": "LIME",
}
SYSTEM_PROMPTS = {
    "model-default": "the model's default system prompt",
    "none": "no system prompt",
    "llama2-original": "Llama-2's original system prompt",
}
TYPES = {  # XSTest's prompt types as the paper names them (Röttger et al. 2024, Table 1)
    "homonyms": "Homonyms",
    "figurative_language": "Figurative Language",
    "safe_targets": "Safe Targets",
    "safe_contexts": "Safe Contexts",
    "definitions": "Definitions",
    "real_group_nons_discr": "Real Discr./Nons. Group",
    "nons_group_real_discr": "Nons. Discr./Real Group",
    "historical_events": "Historical Events",
    "privacy_public": "Privacy (Public)",
    "privacy_fictional": "Privacy (Fictional)",
    "contrast_discr": "Contrast: Discrimination",
    "contrast_privacy": "Contrast: Privacy",
}
_WITH_CONDITION = re.compile(r"^(?P<model>.+?) \((?P<condition>[^()]+)\)$")


def display_name(name) -> str:
    """The human name of a model spec, bundled completion set, label column or attribution method;
    `"default (model-default)"` (a model with its system-prompt condition, as `lexprobe evaluate`
    names a generated set) maps both parts. A local path becomes its file name; anything else (a hub
    id such as org/name) is returned as it is. None and "" give ""."""
    if name is None:
        return ""
    text = str(name).strip()
    if not text:
        return ""
    for table in (MODELS, LABEL_COLUMNS, METHODS):
        if text in table:
            return table[text]
    match = _WITH_CONDITION.match(text)
    if match and match["model"] in MODELS:
        condition = match["condition"]
        return f"{MODELS[match['model']]} ({SYSTEM_PROMPTS.get(condition, condition)})"
    if text.startswith(("/", ".", "~")) or "\\" in text or text.endswith(".gguf"):  # a local path
        return PurePath(text.replace("\\", "/")).name or text
    return text  # a hub id (org/name) or anything else


def model_name(run: dict) -> str:
    """The human name of a run's model (`run["model_spec"]`), "" when the run does not say."""
    return display_name((run or {}).get("model_spec"))


def type_name(prompt_type) -> str:
    """XSTest's name of a prompt type ("contrast_homonyms" -> "Contrast: Homonyms")."""
    text = str(prompt_type)
    if text in TYPES:
        return TYPES[text]
    if text.startswith("contrast_") and text.removeprefix("contrast_") in TYPES:
        return "Contrast: " + TYPES[text.removeprefix("contrast_")]
    return text.replace("_", " ")


def with_model(title: str, run: dict) -> str:
    """`title` followed by the run's model in parentheses (the title alone when there is none)."""
    model = model_name(run)
    return f"{title} ({model})" if model else title
