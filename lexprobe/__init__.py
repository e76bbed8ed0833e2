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

from importlib import import_module, metadata

__version__ = metadata.version("lexprobe")

# Names are imported when first used (PEP 562), so `import lexprobe.cli` and `lexprobe --help` do not
# pay for torch and transformers.
_EXPORTS = {
    "Probe": "lexprobe.api",
    "classify": "lexprobe.api",
    "load": "lexprobe.api",
    "load_result": "lexprobe.api",
    "Result": "lexprobe.toolkit.io.results",
    "AttributionSettings": "lexprobe.toolkit.attribution",
    "MethodOutput": "lexprobe.toolkit.attribution",
    "PromptTarget": "lexprobe.toolkit.attribution",
    "InputError": "lexprobe.toolkit.errors",
    "LexprobeError": "lexprobe.toolkit.errors",
    "ModelError": "lexprobe.toolkit.errors",
    "OutputError": "lexprobe.toolkit.errors",
    "list_suites": "lexprobe.toolkit.io.suites",
    "load_suite": "lexprobe.toolkit.io.suites",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lexprobe' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


def list_attribution_methods() -> list[str]:
    """The registered attribution methods (`Probe.attribute(methods=...)`, `--method`)."""
    from lexprobe.toolkit.attribution import ATTRIBUTION_METHODS

    return ATTRIBUTION_METHODS.names()


def register_attribution_method(name: str, replace: bool = False):
    """Decorator: register `fn(target: PromptTarget, settings: AttributionSettings) -> MethodOutput` as
    an attribution method under `name` (the README's "Python API" has an example); `replace=True`
    replaces a method of that name (re-running a notebook cell)."""
    from lexprobe.toolkit.attribution import ATTRIBUTION_METHODS

    return ATTRIBUTION_METHODS.register(name, replace)


__all__ = sorted([*_EXPORTS, "__version__", "list_attribution_methods", "register_attribution_method"])
