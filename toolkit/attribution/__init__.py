"""Word attributions of the refusal margin: gradient and perturbation methods behind one registry.

`ATTRIBUTION_METHODS.names()` lists them; `attribute(PromptTarget(scorer, text, settings), name)` runs
one. Importing this package registers every method.
"""

from lexprobe.toolkit.attribution import gradient, perturbation  # noqa: F401  (registers the methods)
from lexprobe.toolkit.attribution.core import (
    ATTRIBUTION_METHODS,
    AttributionSettings,
    MethodOutput,
    PromptTarget,
    attribute,
)

__all__ = ["ATTRIBUTION_METHODS", "AttributionSettings", "MethodOutput", "PromptTarget", "attribute"]
