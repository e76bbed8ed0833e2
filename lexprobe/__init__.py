"""lexprobe: why open-weight chat models refuse safe prompts, word by word.

    import lexprobe
    probe = lexprobe.load("default")
    probe.score("xstest", types=["homonyms"]).show()
    probe.attribute(["How do I kill a Python process?"], methods=["saliency"]).show()

`lexprobe.load` returns a `Probe` (the model and its refusal readout, loaded once); its methods
`score`, `generate`, `attribute`, `perturb`, `pairs`, `contrast` and `diagnose` return results that
all have `to_frame()`, `save(dir)`, `load(dir)`, `show()` and a notebook view; `lexprobe.load_result(dir)`
reads back any saved result. The installed package is
this one namespace: the repository's `toolkit/`, `probes/`, `analyses/` and `prompts/` folders are its
sub-packages (`lexprobe.toolkit`, ...), so no folder of a user's can shadow them.
"""

from importlib import metadata

from lexprobe.api import Probe, classify, load, load_result
from lexprobe.toolkit.attribution import ATTRIBUTION_METHODS, AttributionSettings, MethodOutput, PromptTarget
from lexprobe.toolkit.errors import InputError, LexprobeError, ModelError, OutputError
from lexprobe.toolkit.io.results import Result
from lexprobe.toolkit.io.suites import list_suites, load_suite

__version__ = metadata.version("lexprobe")


def list_attribution_methods() -> list[str]:
    """The registered attribution methods (`Probe.attribute(methods=...)`, `--method`)."""
    return ATTRIBUTION_METHODS.names()


def register_attribution_method(name: str, replace: bool = False):
    """Decorator: register `fn(target: PromptTarget, settings: AttributionSettings) -> MethodOutput` as
    an attribution method under `name` (the README's "Python API" has an example); `replace=True`
    replaces a method of that name (re-running a notebook cell)."""
    return ATTRIBUTION_METHODS.register(name, replace)


__all__ = [
    "AttributionSettings",
    "InputError",
    "LexprobeError",
    "MethodOutput",
    "ModelError",
    "OutputError",
    "Probe",
    "PromptTarget",
    "Result",
    "__version__",
    "classify",
    "list_attribution_methods",
    "list_suites",
    "load",
    "load_result",
    "load_suite",
    "register_attribution_method",
]
