"""Configuration dataclasses: keyword-only, and built from parsed command-line flags by field name.

Every study's config is a `kw_only` dataclass of `Options`; a CLI flag's `dest` is the name of the field
it sets (`--steps` sets `n_steps`), so `Config.from_cli(args)` needs no hand-kept mapping. A field whose
type is itself `Options` (a config's `model: ModelOptions`) is built from the same flags.
"""

from __future__ import annotations

import dataclasses
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


@cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _options_type(cls, name: str) -> type[Options] | None:
    hint = _hints(cls).get(name)
    for candidate in (hint, *typing.get_args(hint)):
        if isinstance(candidate, type) and issubclass(candidate, Options):
            return candidate
    return None
