"""Where in the model a trigger word's effect travels: activation patching and direction projections.

For a prompt and its minimal-pair variant (one word swapped, `lexprobe perturb` or `pairs`), the
residual stream entering block l at token t is taken from the variant's pass and put into the
prompt's pass; the refusal margin that comes out, against the two unpatched margins, says how much of
the margin change that site carries:

    share(l, t) = (margin patched at (l, t) - margin of the prompt) / (margin of the variant - margin of the prompt)

Patching every token at one block reproduces the variant's margin exactly (everything downstream is
the variant's). Sites are the tokens after the shared prefix: the user's text, the chat template's
tail and the readout's tree. The two texts must have as many tokens there (a swap of one token for
one token); tokens are aligned by position.

One forward pass per block patches each token in its own row: a block's sites cost one batch. Blocks
before the patched one are not run again: they are the prompt's, so the pass starts from the prompt's
residual entering that block (`_from_block`), which halves the work over all blocks. Where that does
not apply (a steering is on, or the blocks return tuples) the whole pass runs with a hook.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from lexprobe.probes.hooks import block_input_modules, output_tensor
from lexprobe.toolkit.errors import InputError


@dataclass
class Patching:
    shares: np.ndarray  # [n_layers, n_sites]: share of the margin change carried by each site
    margins: np.ndarray  # [n_layers, n_sites]: the prompt's margin with that site patched
    margin_prompt: float
    margin_variant: float
    tokens: list[str]  # the prompt's token at each site
    variant_tokens: list[str]
    kinds: list[str]  # user | template | readout


@torch.no_grad()
def residuals(scorer, suffix: list[int]) -> torch.Tensor:
    """[n_layers, q, d_model]: the residual entering every block at every suffix-and-tree position. The
    pass also notes whether the model's blocks return tensors (`_skips_blocks`)."""
    seen: list[torch.Tensor] = []
    tensors: list[bool] = []

    def keep(_module, _inputs, output):
        seen.append(output_tensor(output)[0].clone())
        tensors.append(isinstance(output, torch.Tensor))

    scorer.forward(scorer.batch([suffix]), hook_pairs=[(m, keep) for m in block_input_modules(scorer.lm)])
    scorer.lm.extra["blocks_return_tensors"] = all(tensors[1:])  # the first is the embedding's
    return torch.stack(seen)


class _Known(torch.nn.Module):
    """Stands in for a block whose output is known: `value` for the last block skipped, else its input
    unchanged (the blocks before it compute nothing either)."""

    def __init__(self, value: torch.Tensor | None = None):
        super().__init__()
        self.value = value

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states if self.value is None else self.value


@contextmanager
def _from_block(lm, layer: int, entering: torch.Tensor) -> Iterator[None]:
    """Passes in which blocks 0 .. layer - 1 are not run and block `layer` receives `entering`
    [batch, q, d_model]. The blocks keep their places (a model's per-block settings, such as which
    layers use a sliding window, go by index) and are put back on exit."""
    blocks = lm.layers
    kept = [blocks[i] for i in range(layer)]
    try:
        for i in range(layer):
            blocks[i] = _Known(entering if i == layer - 1 else None)
        yield
    finally:
        for i, block in enumerate(kept):
            blocks[i] = block


def _skips_blocks(scorer) -> bool:
    """Whether `_from_block` applies: no steering (its hooks sit on the blocks), and blocks known to
    return a tensor (`residuals` notes it; a model that reads `output[0]` of a block would take a row
    of a tensor)."""
    lm = scorer.lm
    if lm.extra.get("steering") is not None or lm.extra.get("gate") is not None:
        return False
    return lm.extra.get("blocks_return_tensors", False)


@torch.no_grad()
def patched_margins(
    scorer,
    suffix: list[int],
    donor: torch.Tensor,
    layer: int,
    sites: list[list[int]],
    own: torch.Tensor | None = None,
) -> np.ndarray:
    """The decision margin of `suffix` with, in row k, the residual entering block `layer` at the
    positions `sites[k]` taken from `donor` ([n_layers, q, d_model], `residuals` of another text).
    `own`: `residuals` of `suffix` itself, so that the blocks before `layer` need not run again."""
    from lexprobe.probes.margin import MarginProbe

    rows, cols = zip(*[(k, t) for k, site in enumerate(sites) for t in site]) if any(sites) else ((), ())
    rows_t, cols_t = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)

    def patched(h: torch.Tensor) -> torch.Tensor:
        h[rows_t.to(h.device), cols_t.to(h.device)] = donor[layer, cols_t].to(h.device, h.dtype)
        return h

    def put(_module, _inputs, output):
        h = patched(output_tensor(output).clone())
        return (h, *output[1:]) if isinstance(output, tuple) else h

    probe = MarginProbe(scorer.lm, scorer.readout)
    batch = scorer.batch([suffix] * len(sites))
    if own is not None and layer > 0 and _skips_blocks(scorer):
        entering = patched(own[layer].expand(len(sites), -1, -1).clone())
        with _from_block(scorer.lm, layer, entering):
            scorer.forward(batch, hook_pairs=probe.hook_pairs())
    else:
        scorer.forward(batch, hook_pairs=[(block_input_modules(scorer.lm)[layer], put), *probe.hook_pairs()])
    return probe.margins().decision.cpu().numpy()


@torch.no_grad()
def patch(scorer, prompt: str, variant: str) -> Patching:
    """The share of the prompt-to-variant margin change each (block, token) site carries (module doc)."""
    from lexprobe.toolkit.models.chat import USER

    a, b = scorer.encode(prompt, "the prompt"), scorer.encode(variant, "the variant")
    sa, sb = scorer.suffix_ids(a), scorer.suffix_ids(b)
    if len(sa) != len(sb):
        raise InputError(
            f"the prompt and its variant differ in length ({len(sa)} and {len(sb)} tokens after the shared "
            "prefix): patching aligns tokens by position, so pick a swap of one token for one token"
        )
    donor, own = residuals(scorer, sb), residuals(scorer, sa)  # [L, q, d] each
    n_layers, q = donor.shape[:2]
    margins = np.stack(
        [patched_margins(scorer, sa, donor, layer, [[t] for t in range(q)], own) for layer in range(n_layers)]
    )
    base = scorer.batch([sa])
    m_prompt = float(scorer.margins_for(base)[0].decision[0])
    m_variant = float(scorer.margins_for(scorer.batch([sb]))[0].decision[0])
    change = m_variant - m_prompt
    shares = (margins - m_prompt) / change if abs(change) > 1e-9 else np.full_like(margins, np.nan)
    tok = scorer.lm.tokenizer
    p = scorer.prefix_len
    kinds = ["user" if k == USER else "template" for k in a.token_kinds[p:]] + ["readout"] * (q - len(sa))
    tree = list(scorer.readout.extra_tokens)
    return Patching(
        shares,
        margins,
        m_prompt,
        m_variant,
        [tok.decode([t]) for t in sa + tree],
        [tok.decode([t]) for t in sb + tree],
        kinds,
    )


@torch.no_grad()
def projections(scorer, texts: list[str], direction) -> np.ndarray:
    """[len(texts), n_layers]: each text's residual entering every block, at the direction's template
    position, projected on the unit direction."""
    unit = (direction.vector / direction.vector.norm()).double()
    out = np.zeros((len(texts), len(scorer.lm.layers)))
    n_tree = len(scorer.readout.tree)
    for i, text in enumerate(texts):
        h = residuals(scorer, scorer.suffix_ids(scorer.encode(text)))  # [L, q, d]
        at = h.shape[1] - n_tree + direction.position  # the template position, counted from its end
        out[i] = (h[:, at].double().cpu() @ unit).numpy()
    return out
