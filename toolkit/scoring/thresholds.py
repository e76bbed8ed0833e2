"""The margin above which a model refuses, per model and system-prompt condition.

`lexprobe validate-margin` measures it against real generations and saves it here; later studies
(`perturb`, `pairs`, `contrast`) read it to say whether a change flips the refusal. Without a saved
value the threshold is 0, where the decision margin changes sign (greedy decoding switches from a
compliance opening to a refusal opening).
"""

from __future__ import annotations

import hashlib
import json
import logging

from lexprobe.toolkit.io.cache import cache_dir, write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_SOURCE = (
    "0: the decision margin's sign (no validate-margin result saved for this model and condition)"
)


def _path(lm, condition: dict):
    key = hashlib.sha256(json.dumps(condition, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir("thresholds", lm.weights_sha256[:16]) / f"{key}.json"


def _digest(value: float, condition: dict) -> str:
    return hashlib.sha256(json.dumps([float(value), condition], sort_keys=True).encode()).hexdigest()


def save_threshold(lm, fmt, value: float, details: dict) -> None:
    """Keep `value` for this model and condition (`fmt`: the ChatFormat, system prompt and template)."""
    condition = fmt.describe()
    record = {"threshold": float(value), "system_prompt": condition, **details}
    write_json_atomic(_path(lm, condition), record | {"sha256": _digest(value, condition)})


def refusal_threshold(lm, fmt) -> tuple[float, str]:
    """(threshold, where it comes from) for this model and condition (`fmt`, a ChatFormat). A saved one
    whose numbers do not match its sha256 (edited or damaged) is not used."""
    path = _path(lm, fmt.describe())
    try:
        data = json.loads(path.read_text()) if path.exists() else None
        if data is not None:
            if "sha256" in data and data["sha256"] != _digest(data["threshold"], data["system_prompt"]):
                raise ValueError("its numbers do not match its sha256")
            return float(data["threshold"]), f"validate-margin ({path})"
    except (ValueError, KeyError, TypeError) as err:  # a damaged saved threshold is not used
        log.warning("the saved refusal threshold %s is damaged (%s): using 0", path, err)
    return 0.0, DEFAULT_SOURCE
