"""The Python API's arguments, checked at the boundary: each keyword with a CLI flag of the same name is
checked by that flag's own type function (`toolkit.config`), before any work, and an error from below
is told in the caller's terms (`types=`, where the command line says `--type`)."""

from __future__ import annotations

import argparse
import functools
import inspect
import re
from pathlib import Path

import pandas as pd

from lexprobe.probes.harmfulness import HarmfulnessProbe
from lexprobe.probes.margin import RefusalReadout
from lexprobe.toolkit import config as _values
from lexprobe.toolkit.attribution import AttributionSettings
from lexprobe.toolkit.config import as_keywords
from lexprobe.toolkit.errors import InputError, LexprobeError, did_you_mean
from lexprobe.toolkit.io.results import Result
from lexprobe.toolkit.io.suites import SURROGATE
from lexprobe.toolkit.mechanism.direction import RefusalDirection

# Every keyword argument of the API with a CLI flag of the same name is checked as that flag is (the same
# type function, `toolkit.config`), before any work; a wrong type or value is an InputError naming the
# argument. [f]: a list of such values (one value is taken as a list of one); bool: True or False; str:
# text; TEXTS: a path; ID: a prompt id.
TEXTS = (str, Path)
ID = (str, int)  # a prompt id: "7" or 7
ARGUMENTS = {
    "limit": _values.positive_int,
    "max_new_tokens": _values.positive_int,
    "n_random": _values.positive_int,
    "per_word": _values.positive_int,
    "content_words": _values.non_negative_int,
    "inv_per_prompt": _values.positive_int,
    "val_prompts": _values.positive_int,
    "train_prompts": _values.positive_int,
    "top": _values.positive_int,
    "batch_size": _values.positive_int,
    "generate_batch_size": _values.positive_int,
    "n_steps": _values.positive_int,
    "max_steps": _values.positive_int,
    "n_samples": _values.positive_int,
    "generate_per_type": _values.non_negative_int,
    "seed": _values.seed,
    "min_similarity": _values.similarity,
    "kl_bound": _values.positive_float,
    "tolerance": _values.positive_float,
    "gate_width": _values.non_negative_float,
    "max_unsafe_drop": _values.share,
    "ablate": [_values.positive_float],
    "conditional": [_values.positive_float],
    "false_refusal": [_values.positive_float],
    "coefficients": [_values.share],
    "types": [str],
    "ids": [ID],
    "methods": [str],
    "strategies": [str],
    "rewrites": [str],
    "layers": bool,
    "faithfulness": bool,
    "contrasts": bool,
    "inv": bool,
    "attribution": bool,
    "perturb": bool,
    "mechanism": bool,
    "instruction": bool,
    "group_phrases": bool,
    "recalibrate": bool,
    "verify_weights": bool,
    "prompt": str,
    "variant": str,
    "contrast": str,
    "pair_map": TEXTS,
    "lexicon": TEXTS,
    "target": str,
    "rule": str,
    "baseline": str,
    "replacement": str,
    "system_prompt": str,
    "chat_template": TEXTS,
    "dtype": str,
    "harmfulness": (bool, str, Path, HarmfulnessProbe),
    "direction": (str, Path, RefusalDirection),
    "attributions": (str, Path, pd.DataFrame, Result),
    "substitutions": (str, Path, pd.DataFrame, Result),
    "pairs": (str, Path, pd.DataFrame, list, tuple),
    "fix": (str, Path, Result),
    "readout": (str, Path, RefusalReadout),
    "device": str,
    "weights_sha256": str,
    "classifier": str,
}


def check_argument(name: str, value, kind):
    """`value` as the API takes it for argument `name` (a list where `kind` is one), or InputError."""
    if isinstance(kind, tuple) and kind not in (TEXTS, ID):  # Python objects an argument may be
        if not isinstance(value, kind):
            names = " or ".join(k.__name__ for k in kind)
            raise InputError(f"{name} must be {names}, not {type(value).__name__} {value!r:.60}")
        return value
    if isinstance(kind, list):
        items = [value] if isinstance(value, str | int | float) else value
        if not isinstance(items, list | tuple):
            raise InputError(f"{name} must be one value or a list of them, not {value!r}")
        return [check_argument(name, v, kind[0]) for v in items]
    if kind is bool:
        if not isinstance(value, bool):
            raise InputError(f"{name} must be True or False, not {value!r}")
        return value
    if kind in (str, TEXTS, ID):
        what = {str: "text", TEXTS: "a path", ID: "text or a whole number"}[kind]
        if isinstance(value, bool) or not isinstance(value, kind) or not str(value).strip():
            raise InputError(f"{name} must be {what}, not {value!r}")
        if isinstance(value, str) and SURROGATE.search(value):
            raise InputError(f"{name} has an unpaired surrogate (a broken UTF-16 escape such as \\ud800)")
        return value
    whole = kind.__annotations__.get("return") in ("int", int)
    if isinstance(value, bool) or not isinstance(value, int if whole else int | float):
        raise InputError(f"{name} must be a {'whole ' if whole else ''}number, not {value!r}")
    try:
        kind(repr(value))
    except argparse.ArgumentTypeError as err:
        raise InputError(f"{name} {err}") from None
    return value


def checked(method=None, **kinds):
    """`method` with its arguments (and `**settings`) checked by `check_argument` first, by `ARGUMENTS`
    or `kinds` (where a name means another thing here); an argument left at its default is not
    checked, None is taken where the default is None."""
    if method is None:
        return functools.partial(checked, **kinds)
    signature = inspect.signature(method)
    table = ARGUMENTS | kinds

    def value_of(name: str, value, default):
        if name not in table or value is default or (value is None and default is None):
            return value
        return check_argument(name, value, table[name])

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            bound = signature.bind(*args, **kwargs)
        except TypeError as err:  # an argument it does not take, or one missing
            unknown = re.search(r"unexpected keyword argument '(\w+)'", str(err))
            hint = did_you_mean(unknown.group(1), signature.parameters) if unknown else ""
            raise InputError(f"{method.__name__}: {err}{'; ' + hint.rstrip() if hint else ''}") from None
        for name, value in list(bound.arguments.items()):
            param = signature.parameters[name]
            if param.kind is param.VAR_KEYWORD:
                bound.arguments[name] = {k: value_of(k, v, None) for k, v in value.items()}
            else:
                bound.arguments[name] = value_of(name, value, param.default)
        try:
            return method(*bound.args, **bound.kwargs)
        except LexprobeError as err:  # told in the caller's terms: `types=`, where the CLI says `--type`
            if err.args and isinstance(err.args[0], str):
                err.args = (as_keywords(err.args[0]), *err.args[1:])
            raise

    return wrapper


def attribution_settings(settings: dict) -> AttributionSettings:
    """`settings` as AttributionSettings; a name it does not have is an InputError ("did you mean")."""
    import dataclasses

    known = [f.name for f in dataclasses.fields(AttributionSettings)]
    for name in settings:
        if name not in known:
            raise InputError(
                f"unknown attribution setting {name!r}: {did_you_mean(name, known)}the settings are "
                f"{', '.join(known)}"
            )
    return AttributionSettings(**settings)
