"""Readout calibration: derive a model's refusal readout from its own responses to calibration prompts
(never XSTest).

1. Greedy-generate `max_new_tokens` for `n_per_class` harmful and as many harmless calibration
   instructions (`prompts/calibration_*_train.json`), under the system-prompt condition being studied.
2. Label each response refusal / compliance with a response classifier (default `rules`).
3. Build a trie over the responses' first tokens (`lexprobe.probes.readout.derive_readout`).
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
`cache_root()/readouts/`, with the calibration responses beside it for inspection. The embedded
default model's readouts for every preset condition, in float32 and bfloat16, ship with lexprobe
(`prompts/readouts/`, made by `scripts/ship_readouts.py`, under the same key): a cold start loads
them instead of calibrating, and `--recalibrate` calibrates on this machine all the same.

Why 16 new tokens: the `rules` classifier labels a response by its opening, and the trie reads at
most `max_depth` = 8 tokens. On the 334 calibration responses of the default model (float32 and bf16)
and of SmolLM2-135M, labels and trie from the first 8, 10, 12, 16, 20 or 24 tokens were identical to
those from 32 (measured on the responses.csv of each cached readout), so 16 keeps a margin of two
over what the labels needed and halves the decoding.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lexprobe import prompts
from lexprobe.probes.margin import MarginProbe, RefusalReadout
from lexprobe.probes.readout import (
    READOUT_VERSION,
    SMOOTH_TEMPERATURES,
    SMOOTH_VERSION,
    ReadoutSettings,
    choose_temperature,
    derive_readout,
    load_readout_file,
    opening_sequences,
    refusal_openings,
)
from lexprobe.toolkit.behaviour.classify import classify, is_refusal
from lexprobe.toolkit.behaviour.generation import generate
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.cache import cache_dir, write_json_atomic, write_text_atomic
from lexprobe.toolkit.io.locks import building
from lexprobe.toolkit.io.progress import progress
from lexprobe.toolkit.io.results import Timer, git_commit, versions
from lexprobe.toolkit.io.suites import load_suite
from lexprobe.toolkit.models.devices import describe_machine, dtype_name
from lexprobe.toolkit.scoring.scorer import Scorer

log = logging.getLogger(__name__)
SHIPPED = "readouts"  # prompts/readouts/<cache key>.json


def _cache_key(lm, fmt, settings: ReadoutSettings) -> str:
    spec = {
        "version": READOUT_VERSION,
        "weights": lm.weights_sha256,
        "dtype": dtype_name(lm.dtype),
        "system": fmt.describe(),
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


def get_readout(
    lm, fmt, batch_size: int = 32, settings: ReadoutSettings | None = None, rebuild: bool = False
):
    """The readout for this model, dtype, condition and settings: cached, else shipped with lexprobe,
    else calibrated here (and cached); `rebuild` calibrates here whatever exists."""
    settings = settings or ReadoutSettings()
    directory = cache_dir("readouts", lm.weights_sha256[:16])
    key = _cache_key(lm, fmt, settings)
    path = directory / f"{key}.json"
    with building(path):  # one process calibrates, the others wait and then read its readout
        readout = None if rebuild else _cached(path, len(lm.tokenizer))
        where = f"cache: {path}"
        if readout is None and not rebuild:
            readout, where = (
                _shipped(key, len(lm.tokenizer)),
                f"shipped with lexprobe: prompts/{SHIPPED}/{key}.json",
            )
        if readout is not None:
            if readout.details.get("smooth_version") != SMOOTH_VERSION:  # made before this definition
                texts = calibration_prompts(settings.n_per_class)
                set_smooth_temperature(lm, fmt, readout, texts, max(batch_size, 32))
                write_json_atomic(path, json.loads(readout.to_json()))
            made = readout.details.get("calibrated", {})
            log.info("readout: %s (calibrated on %s)", where, made.get("machine", "an unrecorded machine"))
        else:
            log.warning(
                "no readout of this model, dtype and condition is cached or shipped: calibrating one now, once "
                "(%d calibration prompts generated %d tokens each: 1.5 to 6 minutes for the default model on a "
                "2-core CPU); --readout FILE takes one you have",
                2 * settings.n_per_class,
                settings.max_new_tokens,
            )
            timer = Timer()
            readout, table = calibrate(lm, fmt, settings, batch_size=max(batch_size, 32))
            readout.details["calibrated"] = {
                "machine": describe_machine(lm.device),
                "seconds": timer.seconds,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "lexprobe_git_commit": git_commit(),
                "versions": versions(),
            }
            write_text_atomic(
                directory / f"{key}.responses.csv", table.to_csv(index=False, lineterminator="\r\n")
            )
            write_json_atomic(path, json.loads(readout.to_json()))
            where = "calibration in this run"
            log.info("calibrated the readout in %.0f s (cached as %s)", timer.seconds, path)
    readout.details["loaded_from"] = where
    return readout


def _shipped(key: str, vocab_size: int) -> RefusalReadout | None:
    """The readout shipped with lexprobe under this cache key, or None."""
    path = prompts.path(SHIPPED) / f"{key}.json"
    if not path.is_file():
        return None
    return load_readout_file(str(path), vocab_size)


def _cached(path: Path, vocab_size: int) -> RefusalReadout | None:
    """The readout cached at `path`, or None when there is none or it is unusable (not JSON, the wrong
    shape, token ids outside the vocabulary): that one is calibrated again."""
    if not path.exists():
        return None
    try:
        readout = load_readout_file(str(path), vocab_size)
        if '"sha256"' not in path.read_text(encoding="utf-8"):  # written before readouts had one:
            write_json_atomic(path, json.loads(readout.to_json()))  # from now on an edit is caught
        return readout
    except InputError as err:
        log.warning("the cached readout %s is unusable (%s); calibrating it again", path.name, err)
        return None
