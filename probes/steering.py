"""Interventions on the residual stream, as forward hooks that always remove themselves.

A `Steering` names a direction in the residual stream and what to do with it:

    ablate = s   x <- x - s (x . r) r, with r the unit direction, at every block's input and on the
                 last block's output (s = 1: directional ablation as Arditi et al. 2024 do it, the
                 direction can be read nowhere downstream; 0 < s < 1 removes part of it)
    add = a, at  x <- x + a d at block `at`'s input, every position (activation addition; d the
                 direction with its own norm, so a = 1 adds the difference in means itself)

Every position is steered: the shared prefix (system prompt), the prompt, the template and the
readout's tree. `steered(lm, steering)` registers the hooks and removes them on exit, exceptions
included; while it is open, `lm.extra["steering"]` names it, so a prefix KV cache computed under other
hooks is computed again (`toolkit.models.prefix`).

Block inputs are hooked as the outputs of the module before them: the embedding for block 0, block
l - 1 for block l; the final residual is the last block's output.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lexprobe.probes.hooks import hooks


@dataclass(frozen=True)
class Steering:
    direction: torch.Tensor  # [d_model]
    ablate: float = 0.0  # share of the direction's component removed everywhere (1: all of it)
    add: float = 0.0  # multiple of the direction added at block `at`'s input
    at: int | None = None  # the block whose input receives the addition
    name: str = "steering"

    def __post_init__(self):
        if self.direction.ndim != 1 or not torch.isfinite(self.direction).all():
            raise ValueError("a steering direction is one finite vector [d_model]")
        if float(self.direction.norm()) == 0:
            raise ValueError("a steering direction cannot be the zero vector")
        if self.add and self.at is None:
            raise ValueError("an activation addition needs the block it adds at (`at`)")

    @property
    def key(self) -> str:
        """The identity of this intervention (a prefix cache computed under another is stale)."""
        digest = hashlib.sha256(self.direction.detach().double().cpu().numpy().tobytes())
        digest.update(f"{self.ablate}|{self.add}|{self.at}".encode())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        parts = []
        if self.ablate:
            parts.append(f"ablate {self.name}" + ("" if self.ablate == 1 else f" x{self.ablate:g}"))
        if self.add:
            parts.append(f"add {self.add:+g} x {self.name} at block {self.at}")
        return ", ".join(parts) or "none"


def _edit(x: torch.Tensor, steerings: list[Steering], block: int) -> torch.Tensor:
    """x [..., d_model]: the residual entering `block` (n_layers: the final residual), steered."""
    for s in steerings:
        d = s.direction.to(device=x.device, dtype=torch.float32)
        if s.add and s.at == block:
            x = (x.float() + s.add * d).to(x.dtype)
        if s.ablate:
            unit = d / d.norm()
            x = (x.float() - s.ablate * (x.float() @ unit)[..., None] * unit).to(x.dtype)
    return x


def hook_pairs(lm, steerings: list[Steering]) -> list:
    """(module, forward hook) pairs: the embedding's output is block 0's input, block l's output is
    block l + 1's input, and the last block's output is the final residual."""
    modules = [lm.embed, *lm.layers]

    def hook_for(block: int):
        def hook(_module, _inputs, output):
            if isinstance(output, tuple):
                return (_edit(output[0], steerings, block), *output[1:])
            return _edit(output, steerings, block)

        return hook

    return [(m, hook_for(i)) for i, m in enumerate(modules)]


@contextmanager
def steered(lm, steering: Steering | list[Steering] | None) -> Iterator[None]:
    """Run everything inside under `steering` (none: as is); the hooks go on exit, whatever happens."""
    steerings = [] if steering is None else [steering] if isinstance(steering, Steering) else list(steering)
    key = "+".join(s.key for s in steerings)
    before = lm.extra.get("steering")
    if not steerings or key == before:  # nothing to do, or already steered so (a study inside a study)
        yield
        return
    lm.extra["steering"] = key
    try:
        with hooks(hook_pairs(lm, steerings)):
            yield
    finally:
        if before is None:
            lm.extra.pop("steering", None)
        else:
            lm.extra["steering"] = before
