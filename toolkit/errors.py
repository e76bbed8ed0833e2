"""lexprobe's exceptions. The CLI turns every `LexprobeError` into exit code 2 and its message, one line
on stderr that names the problem and the fix; from Python, catch the kind you can act on. Where an error
comes from another library's, that one is its `__cause__`."""


class LexprobeError(Exception):
    """Bad input or an environment problem the user can fix; the message says how, on one line."""


class InputError(LexprobeError, ValueError):
    """An argument, flag, prompt, suite or data file that lexprobe cannot use."""


class ModelError(LexprobeError):
    """A model that cannot be loaded or studied: unknown spec, wrong weights hash, no chat template,
    an architecture not in the table, weights that do not fit the device."""


class OutputError(LexprobeError):
    """An output directory that would be overwritten, or cannot be written."""


__all__ = ["InputError", "LexprobeError", "ModelError", "OutputError", "did_you_mean"]


def did_you_mean(name: str, choices, quote: str = "") -> str:
    """ "did you mean X? " for the choice closest to a mistyped `name`, or "" where none is close."""
    import difflib

    choices = list(choices)
    near = difflib.get_close_matches(name, choices, n=1)
    if not near:  # a unique choice the name begins ("llama2" for "llama2-original")
        near = [c for c in choices if name and c.lower().startswith(name.lower())][:2]
        near = near if len(near) == 1 else []
    return f"did you mean {quote}{near[0]}{quote}? " if near else ""


class NonFiniteError(InputError):
    """A forward pass whose numbers overflowed (NaN or inf) for rows `rows` of its batch: never read as
    a margin. `named(names)` says which prompts."""

    def __init__(self, rows: list[int], steering: str | None, dtype: str, names: list[str] | None = None):
        self.rows, self.steering, self.dtype = rows, steering, dtype
        which = (
            ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
            if names
            else (f"{len(rows)} prompt(s)")
        )
        cause = (
            f"under the steering '{steering}': lower its strength"
            if steering
            else f"in {dtype}: try --dtype float32"
        )
        super().__init__(f"the model's hidden states are not finite (NaN or inf) for {which} {cause}")

    def named(self, names: list[str]) -> "NonFiniteError":
        return NonFiniteError(self.rows, self.steering, self.dtype, names)
