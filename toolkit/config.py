"""Configuration dataclasses: keyword-only, and built from parsed command-line flags by field name.

Every study's config is a `kw_only` dataclass of `Options`; a CLI flag's `dest` is the name of the field
it sets (`--steps` sets `n_steps`), so `Config.from_cli(args)` needs no hand-kept mapping. A field whose
type is itself `Options` (a config's `model: ModelOptions`) is built from the same flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import typing
from functools import cache


@dataclasses.dataclass(kw_only=True)
class Options:
    @classmethod
    def from_cli(cls, args, **overrides):
        """This config from an `argparse.Namespace` (or any object with the flags as attributes):
        each field takes the flag of the same name, nested `Options` fields are built the same way,
        fields without a flag keep their defaults; `overrides` win."""
        values = vars(args) if not isinstance(args, dict) else args
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name in overrides:
                kwargs[f.name] = overrides[f.name]
                continue
            nested = _options_type(cls, f.name)
            if nested is not None:  # `--suite S` is SuiteOptions.suite; no --suite: an optional one is None
                optional = type(None) in typing.get_args(_hints(cls)[f.name])
                absent = values.get(f.name, "") is None
                kwargs[f.name] = None if (optional and absent) else nested.from_cli(values)
            elif f.name in values:
                kwargs[f.name] = values[f.name]
        return cls(**kwargs)


# The flags whose field is not their own name with "-" read as "_" (every other flag's is): the Python
# API says `types=` where the command line says `--type`. tests/unit/test_cli_options.py checks this
# table against every command's flags.
FLAG_FIELDS = {
    "--bootstrap": "n_bootstrap",
    "--format": "formats",
    "--from": "source",
    "--ig-rule": "rule",
    "--method": "methods",
    "--random-orders": "n_random",
    "--rewrite": "rewrites",
    "--samples": "n_samples",
    "--steps": "n_steps",
    "--strategy": "strategies",
    "--type": "types",
}
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


def field_of(flag: str) -> str:
    """The config field (and API keyword) a `--flag` sets: `--type` -> `types`."""
    return FLAG_FIELDS.get(flag, flag[2:].replace("-", "_"))


def as_keywords(message: str) -> str:
    """A message of the layers below the interfaces, which name options by their flags, as the Python
    API says it: `--type` as `types=`, `--no-figures` as `figures=False`."""

    def keyword(m: re.Match) -> str:
        flag = m.group(0)
        return f"{field_of('--' + flag[5:])}=False" if flag.startswith("--no-") else f"{field_of(flag)}="

    return _FLAG.sub(keyword, message)


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _options_type(cls, name: str) -> type[Options] | None:
    hint = _hints(cls).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, Options):
            return candidate
    return None


# ------------------------------------------------------------------------------- values
# What a flag accepts, as argparse type functions: the CLI's flags and the Python API's arguments of the
# same name use these same functions (lexprobe.api), so both accept exactly the same values.
ABLATE_MAX = 2.0  # ablate 2 reflects the direction's component; more only amplifies the reflection
ADD_MAX = 50.0  # |add| in multiples of the direction; far past what any direction is selected for


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def ablate_share(text: str) -> float:
    value = _number(text)
    if not 0 < value <= ABLATE_MAX:
        raise argparse.ArgumentTypeError(
            f"is the share of the direction removed, above 0 and at most {ABLATE_MAX:g}, got {text}"
        )
    return value


def add_multiple(text: str) -> float:
    value = _number(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must not be 0 (it adds nothing): leave it out")
    if not abs(value) <= ADD_MAX:
        raise argparse.ArgumentTypeError(
            f"is a multiple of the direction from -{ADD_MAX:g} to {ADD_MAX:g}, got {text}"
        )
    return value


def positive_float(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def similarity(text: str) -> float:
    value = _number(text)
    if not -1 <= value <= 1:
        raise argparse.ArgumentTypeError(f"is a cosine similarity, from -1 to 1, got {text}")
    return value


def seed(text: str) -> int:
    value = _whole(text)
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**32 - 1, got {value}")
    return value


def _whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None


def positive_int(text: str) -> int:
    value = _whole(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")  # "--limit must be ..."
    return value


def non_negative_float(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _whole(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def share(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"is a share, from 0 to 1, got {text}")
    return value
