"""Derive a model's refusal readout from its own responses to calibration prompts (never XSTest).

1. Greedy-generate `max_new_tokens` for `n_per_class` harmful and as many harmless calibration
   instructions (`prompts/calibration_*_train.json`), under the system-prompt condition being studied.
2. Label each response refusal / compliance with a response classifier (default `rules`).
3. Build a trie over the responses' first tokens. A prefix is *expanded* (its next tokens listed) when
   at least `min_count` responses of each label pass through it, up to `max_depth` tokens. A listed
   token's refusal rate is smoothed toward its parent's: r = (refusals + prior * r_parent) / (n + prior),
   with r_parent = 0 at the root (refusals open with a few stereotyped tokens; compliance is the open
   class, so an unseen first token counts as compliance).
4. A model that refused fewer than `min_refusals` calibration prompts (SmolLM2-135M refuses almost
   none; a random model none) gets the bundled refusal openings (`prompts/refusal_openings.json`),
   tokenised for it, as extra refusal examples, with a warning and a record in the details: its
   margin then reads how close the model is to opening a typical refusal.
5. Check it on the held-out calibration val split (39 + 39): AUROC of the margin for the labelled
   val responses, stored in the readout's details.
6. Choose the smooth margin's temperature on all calibration prompts (never XSTest): the largest T of
   `SMOOTH_TEMPERATURES` whose smooth margin has the decision margin's sign on at least
   `SMOOTH_AGREEMENT` of them (balanced over prompts the decision margin refuses and answers).

The result is cached per model (weights sha256), dtype, system-prompt condition and settings under
`cache_root()/readouts/`, with the calibration responses beside it for inspection.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lexprobe import prompts
from lexprobe.probes.margin import MarginProbe, Node, RefusalReadout
from lexprobe.toolkit.cache import cache_dir, write_json_atomic
from lexprobe.toolkit.classify import classify, is_refusal
from lexprobe.toolkit.errors import LexprobeError
from lexprobe.toolkit.generate import generate
from lexprobe.toolkit.progress import progress
from lexprobe.toolkit.suites import load_suite

log = logging.getLogger(__name__)

READOUT_VERSION = 3
SMOOTH_TEMPERATURES = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
SMOOTH_AGREEMENT = 0.98
SMOOTH_VERSION = 2  # the definition of the smooth margin (probes/margin.py); a change re-chooses T


@dataclass(frozen=True)
class ReadoutSettings:
    n_per_class: int = 128
    max_new_tokens: int = 32
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


def _cache_key(lm, fmt, settings: ReadoutSettings) -> str:
    spec = {
        "version": READOUT_VERSION,
        "weights": lm.weights_sha256,
        "dtype": str(lm.dtype),
        "system": fmt.system.describe(),
        "settings": asdict(settings),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


def _calibration_prompts(split: str, n: int) -> tuple[list[str], list[str]]:
    suffix = "" if split == "train" else "-val"
    harmful = load_suite(f"calibration-harmful{suffix}").frame["prompt"].tolist()[:n]
    harmless = load_suite(f"calibration-harmless{suffix}").frame["prompt"].tolist()[:n]
    return harmful, harmless


def calibration_prompts(n_per_class: int = ReadoutSettings.n_per_class) -> list[str]:
    """The prompts a readout is calibrated on: train (n harmful, n harmless), then all of val."""
    harmful, harmless = _calibration_prompts("train", n_per_class)
    val_harmful, val_harmless = _calibration_prompts("val", 10**6)
    return harmful + harmless + val_harmful + val_harmless


def calibrate(
    lm, fmt, settings: ReadoutSettings, batch_size: int = 32
) -> tuple[RefusalReadout, pd.DataFrame]:
    """Generate on the calibration prompts, label the responses, derive and validate a readout."""
    from lexprobe.toolkit.stats import auroc

    frames = []
    for split, n in (("train", settings.n_per_class), ("val", 10**6)):
        harmful, harmless = _calibration_prompts(split, n)
        texts = harmful + harmless
        done = generate(
            lm, fmt, texts, settings.max_new_tokens, batch_size, desc=f"calibrating readout ({split})"
        )
        labels = classify([c.text for c in done], texts, name=settings.classifier)
        frames.append(
            pd.DataFrame(
                {
                    "split": split,
                    "source": ["harmful"] * len(harmful) + ["harmless"] * len(harmless),
                    "prompt": texts,
                    "completion": [c.text for c in done],
                    "token_ids": [json.dumps(c.token_ids) for c in done],
                    "label": labels,
                }
            )
        )
    table = pd.concat(frames, ignore_index=True)
    train = table[table["split"] == "train"]
    sequences = [json.loads(t) for t in train["token_ids"]]
    refused = [is_refusal(x) for x in train["label"]]
    n_refused = sum(refused)
    lexicon = None
    if n_refused < settings.min_refusals:
        openings = refusal_openings()
        sequences += opening_sequences(lm.tokenizer, openings)
        refused += [True] * len(openings)
        lexicon = {
            "file": "prompts/refusal_openings.json",
            "openings": len(openings),
            "reason": f"the model refused {n_refused} of {len(train)} calibration prompts "
            f"(fewer than min_refusals = {settings.min_refusals})",
        }
        log.warning(
            "the model refused only %d of %d calibration prompts under system prompt '%s': its readout adds "
            "%d typical refusal openings (prompts/refusal_openings.json), so its margin reads how close it "
            "comes to opening a typical refusal",
            n_refused,
            len(train),
            fmt.system.name,
            len(openings),
        )
    readout = derive_readout(sequences, refused, settings)
    decision, smooth = set_smooth_temperature(lm, fmt, readout, table["prompt"].tolist(), batch_size)
    val = (table["split"] == "val").to_numpy()
    val_refused = [is_refusal(x) for x in table.loc[val, "label"]]
    readout.details |= {
        "method": "trie of response openings from calibration responses (probes/readout.py)",
        "settings": asdict(settings),
        "train_prompts": len(train),
        "train_refusal_rate": round(n_refused / len(train), 4),
        "lexicon_fallback": lexicon,
        "val_prompts": int(val.sum()),
        "val_refusal_rate": round(sum(val_refused) / len(val_refused), 4),
        "val_auroc": None if len(set(val_refused)) < 2 else round(auroc(val_refused, decision[val]), 4),
        "expanded_prefixes": len(readout.nodes),
    }
    table["margin"] = decision
    table["margin_smooth"] = smooth
    return readout, table


def set_smooth_temperature(lm, fmt, readout, texts: list[str], batch_size: int = 32):
    """Choose the smooth margin's temperature on `texts` (calibration prompts) and record it, with the
    sign agreement of every candidate and `SMOOTH_VERSION`, in the readout's details. Returns the
    decision margins [n] and the chosen smooth margins [n] of the texts."""
    from lexprobe.toolkit.scoring import Scorer

    decision, smooth = smooth_margins(Scorer(lm, fmt, readout, batch_size), texts, SMOOTH_TEMPERATURES)
    temperature, agreement = choose_temperature(decision, smooth)
    readout.details |= {
        "smooth_temperature": temperature,
        "smooth_sign_agreement": {str(t): round(a, 4) for t, a in agreement.items()},
        "smooth_version": SMOOTH_VERSION,
        "smooth_prompts": len(texts),
    }
    return decision, smooth[temperature]


@torch.no_grad()
def smooth_margins(scorer, texts: list[str], temperatures) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Decision margins [n] and smooth margins {T: [n]} of `texts`, the log-probabilities computed once."""
    suffixes = [scorer.suffix_ids(scorer.encode(t)) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(suffixes[i]))
    decision = np.zeros(len(texts))
    smooth = {t: np.zeros(len(texts)) for t in temperatures}
    size = scorer.batch_size
    for start in progress(range(0, len(order), size), desc="checking readout", unit="batch"):
        chunk = order[start : start + size]
        probe = MarginProbe(scorer.lm, scorer.readout)
        scorer.forward(scorer.batch([suffixes[i] for i in chunk]), hook_pairs=probe.hook_pairs())
        logp = probe.reader.log_probs(probe.final_states)
        decision[chunk] = probe.reader.read(logp).decision.cpu().numpy()
        for t in temperatures:
            smooth[t][chunk] = probe.reader.read(logp, t).smooth.cpu().numpy()
    return decision, smooth


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
        raise LexprobeError(f"readout file '{path}' does not exist: check --readout") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        raise LexprobeError(
            f"readout file '{path}' is not a lexprobe readout ({err}): see probes/margin.py"
        ) from None
    ids = {t for p, n in readout.nodes.items() for t in (*p, *n.children)}
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        raise LexprobeError(
            f"readout file '{path}' names token ids outside this model's vocabulary of {vocab_size}"
        )
    readout.details.setdefault("source", str(path))
    return readout


def get_readout(
    lm, fmt, batch_size: int = 32, settings: ReadoutSettings | None = None, rebuild: bool = False
):
    """The cached readout for this model, dtype and condition; calibrated on first use."""
    settings = settings or ReadoutSettings()
    directory = cache_dir("readouts", lm.weights_sha256[:16])
    key = _cache_key(lm, fmt, settings)
    path = directory / f"{key}.json"
    if path.exists() and not rebuild:
        try:
            readout = RefusalReadout.from_json(path.read_text())
        except (ValueError, KeyError):
            readout = None  # a corrupt cache entry is rebuilt
        if readout is not None:
            if readout.details.get("smooth_version") != SMOOTH_VERSION:  # made before this definition
                texts = calibration_prompts(settings.n_per_class)
                set_smooth_temperature(lm, fmt, readout, texts, max(batch_size, 32))
                write_json_atomic(path, json.loads(readout.to_json()))
            return readout
    readout, table = calibrate(lm, fmt, settings, batch_size=max(batch_size, 32))
    table.to_csv(directory / f"{key}.responses.csv", index=False)
    write_json_atomic(path, json.loads(readout.to_json()))
    return readout
