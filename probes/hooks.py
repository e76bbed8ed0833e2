"""One context manager that registers forward hooks and always removes them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def hooks(pairs: Iterable[tuple[torch.nn.Module, Callable]]) -> Iterator[None]:
    """Register `fn` as a forward hook on each module; remove every hook on exit, even on exceptions."""
    handles = []
    try:
        for module, fn in pairs:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for handle in handles:
            handle.remove()


def output_tensor(output) -> torch.Tensor:
    """The hidden-state tensor of a module output (decoder blocks return tuples in some versions)."""
    return output[0] if isinstance(output, tuple) else output


def block_input_modules(lm) -> list:
    """The modules whose outputs enter blocks 0 .. L-1: the embedding, then every block but the last."""
    return [lm.embed, *list(lm.layers)[:-1]]
