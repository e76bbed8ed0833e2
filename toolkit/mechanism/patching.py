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

One forward pass per block patches each token in its own row: a block's sites cost one batch.
"""

from __future__ import annotations

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
    """[n_layers, q, d_model]: the residual entering every block at every suffix-and-tree position."""
    seen: list[torch.Tensor] = []
    pairs = [
        (m, lambda _m, _i, out: seen.append(output_tensor(out)[0].clone()))
        for m in block_input_modules(scorer.lm)
    ]
    scorer.forward(scorer.batch([suffix]), hook_pairs=pairs)
    return torch.stack(seen)


@torch.no_grad()
def patched_margins(
    scorer, suffix: list[int], donor: torch.Tensor, layer: int, sites: list[list[int]]
) -> np.ndarray:
    """The decision margin of `suffix` with, in row k, the residual entering block `layer` at the
    positions `sites[k]` taken from `donor` ([n_layers, q, d_model], `residuals` of another text)."""
    from lexprobe.probes.margin import MarginProbe

    rows, cols = zip(*[(k, t) for k, site in enumerate(sites) for t in site]) if any(sites) else ((), ())
    rows_t, cols_t = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)

    def put(_module, _inputs, output):
        h = output_tensor(output).clone()
        h[rows_t.to(h.device), cols_t.to(h.device)] = donor[layer, cols_t].to(h.device, h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    probe = MarginProbe(scorer.lm, scorer.readout)
    scorer.forward(
        scorer.batch([suffix] * len(sites)),
        hook_pairs=[(block_input_modules(scorer.lm)[layer], put), *probe.hook_pairs()],
    )
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
    donor = residuals(scorer, sb)  # [L, q, d]
    n_layers, q = donor.shape[:2]
    margins = np.stack(
        [patched_margins(scorer, sa, donor, layer, [[t] for t in range(q)]) for layer in range(n_layers)]
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
