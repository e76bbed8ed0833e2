"""lexprobe: why open-weight chat models refuse safe prompts, word by word.

The installed package is this one namespace; the repository's `toolkit/`, `probes/`, `analyses/` and
`prompts/` folders are its sub-packages `lexprobe.toolkit`, `lexprobe.probes`, `lexprobe.analyses` and
`lexprobe.prompts` (pyproject.toml maps them), so no folder of a user's can shadow them.
"""

from importlib import metadata

__version__ = metadata.version("lexprobe")
