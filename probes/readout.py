"""A model's refusal readout from labelled response openings: the trie (`derive_readout`), the
bundled refusal openings for models that rarely refuse, the smooth margin's temperature rule, and
readout files. Calibrating one on a model's own responses: `lexprobe.toolkit.readouts.calibrate`.

The trie: a prefix is *expanded* (its next tokens listed) when at least `min_count` responses of each
label pass through it, up to `max_depth` tokens. A listed token's refusal rate is smoothed toward its
parent's: r = (refusals + prior * r_parent) / (n + prior), with r_parent = 0 at the root (refusals
open with a few stereotyped tokens; compliance is the open class, so an unseen first token counts as
compliance).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lexprobe import prompts
from lexprobe.probes.margin import Node, RefusalReadout
from lexprobe.toolkit.errors import InputError

READOUT_VERSION = 3
SMOOTH_TEMPERATURES = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
SMOOTH_AGREEMENT = 0.98
SMOOTH_VERSION = 2  # the definition of the smooth margin (probes/margin.py); a change re-chooses T


@dataclass(frozen=True)
class ReadoutSettings:
    n_per_class: int = 128
    max_new_tokens: int = 16  # labels need no more: `rules` reads the opening (see calibrate.py)
    max_depth: int = 8
    min_count: int = 2
    prior: float = 1.0
    classifier: str = "rules"
    min_refusals: int = 8  # fewer refused calibration prompts than this: add the bundled refusal openings


def refusal_openings() -> list[str]:
    return json.loads(prompts.path("refusal_openings.json").read_text())["openings"]


def opening_sequences(tokenizer, openings: list[str]) -> list[list[int]]:
    """Each opening as the model would write it at the start of its response (no special tokens)."""
    return [tokenizer(text, add_special_tokens=False).input_ids for text in openings]


def derive_readout(
    sequences: list[list[int]], refused: list[bool], settings: ReadoutSettings
) -> RefusalReadout:
    """Build the trie readout from labelled response token sequences (a pure function)."""
    counts: dict[tuple[int, ...], list[int]] = defaultdict(
        lambda: [0, 0]
    )  # prefix -> [refusals, compliances]
    for seq, ref in zip(sequences, refused):
        for depth in range(0, min(len(seq), settings.max_depth) + 1):
            counts[tuple(seq[:depth])][0 if ref else 1] += 1
    children: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for prefix in counts:
        if prefix:
            children[prefix[:-1]].append(prefix[-1])

    nodes: dict[tuple[int, ...], Node] = {}

    def expand(path: tuple[int, ...], rate: float) -> None:
        rates = {}
        for tok in sorted(children[path]):
            n_ref, n_comp = counts[path + (tok,)]
            rates[tok] = (n_ref + settings.prior * rate) / (n_ref + n_comp + settings.prior)
        nodes[path] = Node(rates, rate)
        for tok, r in rates.items():
            n_ref, n_comp = counts[path + (tok,)]
            deep_enough = len(path) + 1 >= settings.max_depth
            if min(n_ref, n_comp) >= settings.min_count and not deep_enough:
                expand(path + (tok,), r)

    expand((), 0.0)
    return RefusalReadout(nodes)


def choose_temperature(decision: np.ndarray, smooth: dict[float, np.ndarray]) -> tuple[float, dict]:
    """The largest temperature whose smooth margin agrees in sign with the decision margin on at least
    `SMOOTH_AGREEMENT` of the prompts, balanced over the prompts it refuses and those it answers (the
    smallest temperature if none does); and the agreement of every temperature."""
    refuses = decision > 0
    agreement = {}
    for t, values in smooth.items():
        same = (values > 0) == refuses
        agreement[t] = float(np.mean([same[group].mean() for group in (refuses, ~refuses) if group.any()]))
    good = [t for t in sorted(smooth, reverse=True) if agreement[t] >= SMOOTH_AGREEMENT]
    return (good[0] if good else min(smooth)), agreement


def load_readout_file(path: str, vocab_size: int) -> RefusalReadout:
    """A readout saved as JSON (the format of the cache files); token ids are checked against the vocab."""
    try:
        readout = RefusalReadout.from_json(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"readout file '{path}' does not exist: check --readout") from None
    except OSError as err:  # a directory, no permission
        raise InputError(f"cannot read readout file '{path}': {err.strerror or err}") from err
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as err:
        raise InputError(
            f"readout file '{path}' is not a lexprobe readout ({err}): see probes/margin.py"
        ) from err
    ids = {t for p, n in readout.nodes.items() for t in (*p, *n.children)}
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        raise InputError(
            f"readout file '{path}' names token ids outside this model's vocabulary of {vocab_size}"
        )
    readout.details.setdefault("source", str(path))
    return readout
