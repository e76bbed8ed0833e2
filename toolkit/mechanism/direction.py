"""The refusal direction of a model under one condition, found as Arditi et al. (2024) find it.

Candidates: at every block's input and every post-instruction position (the chat template's tokens
after the user's text), the mean residual over harmful instructions minus the mean over harmless ones
(the train split of the calibration data, never the evaluation suite; only the harmful instructions
the model refuses and the harmless ones it answers, as Arditi et al. filter theirs).

Selection, on the val split (filtered the same way), with the refusal margin as the refusal score:

    bypass   mean margin of the harmful prompts with the candidate ablated everywhere (lower: the
             direction carries more of the refusal)
    induce   mean margin of the harmless prompts with the candidate added at its own block's input
    kl       mean KL divergence of the first response token's distribution on harmless prompts,
             ablated against as is (how much else ablation changes)

The direction is the candidate with the lowest bypass among those whose induce passes a bound (by
default halfway from the harmless to the harmful prompts' mean margin: `select_direction`), whose kl
is under 0.1 and whose block lies before the last 20% of the stack. Every candidate is screened on a
few val prompts, the best few are measured on the whole val split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lexprobe.probes.hooks import block_input_modules, output_tensor
from lexprobe.probes.margin import MarginProbe
from lexprobe.probes.steering import Steering, steered, unsteered
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.progress import progress
from lexprobe.toolkit.models.chat import USER
from lexprobe.toolkit.models.devices import dtype_name

log = logging.getLogger(__name__)
KL_BOUND = 0.1  # Arditi et al.'s bound on the harmless prompts' KL under ablation
LAST_LAYERS = 0.2  # blocks in the last 20% of the stack are not candidates


@dataclass
class RefusalDirection:
    """A direction in the residual stream [d_model], found at block `layer`'s input and template
    position `position` (counted from the template's end: -1 is its last token)."""

    vector: torch.Tensor
    layer: int
    position: int
    details: dict = field(default_factory=dict)  # provenance and the val figures

    def steering(self, ablate: float = 0.0, add: float = 0.0, name: str = "refusal direction") -> Steering:
        return Steering(self.vector, ablate=ablate, add=add, at=self.layer if add else None, name=name)

    def sha256(self) -> str:
        """The identity of the vector, block and position (checked when a file is read back)."""
        digest = hashlib.sha256(self.vector.detach().double().cpu().numpy().tobytes())
        digest.update(f"{self.layer}|{self.position}".encode())
        return digest.hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {
                "layer": self.layer,
                "position": self.position,
                "norm": float(self.vector.norm()),
                "vector": [float(x) for x in self.vector.double()],
                "sha256": self.sha256(),
                "details": self.details,
            },
            indent=1,
        )

    @classmethod
    def from_json(
        cls, text: str, source: str = "direction", d_model: int | None = None, n_layers: int | None = None
    ) -> RefusalDirection:
        """InputError unless `text` is a direction `to_json` wrote: an object whose vector is finite and
        not zero, whose block and position are whole numbers (the block inside the model where
        `n_layers` is given, the position counted back from the template's end), and whose numbers
        match its sha256 (a file written before directions had one is taken as it is)."""

        def refuse(why: str):
            raise InputError(
                f"{source} is not a lexprobe refusal direction ({why}): write one with `lexprobe direction`"
            )

        try:
            data = json.loads(text)
        except ValueError as err:
            refuse(f"not JSON: {err}")
        if not isinstance(data, dict):
            refuse(f"a JSON {type(data).__name__}, not an object")
        missing = [k for k in ("vector", "layer", "position") if k not in data]
        if missing:
            refuse(f"no {', '.join(missing)}")
        values = data["vector"]
        if not isinstance(values, list) or not all(
            isinstance(x, int | float) and not isinstance(x, bool) for x in values
        ):
            refuse("its vector is not a list of numbers")
        for key in ("layer", "position"):
            if isinstance(data[key], bool) or not isinstance(data[key], int):
                refuse(f"its {key} {data[key]!r} is not a whole number")
        if data["position"] >= 0:
            refuse(
                f"its position {data['position']} is not counted back from the template's end (-1 is its last token)"
            )
        if not isinstance(data.get("details", {}), dict):
            refuse("its details are not an object")
        vector = torch.tensor(values, dtype=torch.float64)
        if (
            vector.ndim != 1
            or not len(vector)
            or not torch.isfinite(vector).all()
            or float(vector.norm()) == 0
        ):
            raise InputError(f"{source}: its vector is not one finite, non-zero vector")
        direction = cls(vector.float(), data["layer"], data["position"], data.get("details", {}))
        if "sha256" in data and data["sha256"] != direction.sha256():
            raise InputError(
                f"{source}: its numbers do not match its sha256 (edited or damaged): write it again with `lexprobe direction`"
            )
        direction.check(source, d_model, n_layers)
        return direction

    def check(
        self,
        source: str,
        d_model: int | None = None,
        n_layers: int | None = None,
        n_positions: int | None = None,
    ) -> None:
        """InputError where this direction does not fit a model of this width and depth, and a template
        with `n_positions` tokens after the prompt."""
        if d_model is not None and len(self.vector) != d_model:
            raise InputError(
                f"{source} is a direction of a model with d_model {len(self.vector)}, this one has {d_model}: "
                "find this model's with `lexprobe direction`"
            )
        if n_layers is not None and not 0 <= self.layer < n_layers:
            raise InputError(
                f"{source} names block {self.layer}, and this model has blocks 0 to {n_layers - 1}"
            )
        if n_positions is not None and not -n_positions <= self.position < 0:
            raise InputError(
                f"{source} names template position {self.position}, and this model's template has "
                f"{n_positions} tokens after the prompt (positions -1 to -{n_positions})"
            )


def load_direction(path, d_model: int | None = None, n_layers: int | None = None) -> RefusalDirection:
    """A direction.json of `lexprobe direction` (or the folder that holds one), or a `RefusalDirection`
    itself (the Python API), checked against the model's width and depth: InputError otherwise."""
    if isinstance(path, RefusalDirection):
        direction, source = path, "the direction given"
    else:
        source = Path(path).expanduser()
        if source.is_dir():
            source = source / "direction.json"
        if not source.is_file():
            raise InputError(
                f"--direction '{path}' does not exist: give a direction.json of `lexprobe direction`"
            )
        try:
            text = source.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(
                f"--direction '{source}' cannot be read as UTF-8 JSON ({err}): give a direction.json"
            ) from None
        direction = RefusalDirection.from_json(text, str(source))
    direction.check(str(source), d_model, n_layers)
    return direction


# ------------------------------------------------------------------------------------------ means


def template_positions(scorer) -> int:
    """How many chat-template tokens follow the user's text (the post-instruction positions)."""
    kinds = scorer.encode("hello").token_kinds
    last_user = max(i for i, k in enumerate(kinds) if k == USER)
    return len(kinds) - 1 - last_user


@torch.no_grad()
def block_input_means(scorer, texts: list[str], desc: str = "activations") -> torch.Tensor:
    """[n_layers, n_positions, d_model] float64: the mean residual entering each block at each
    post-instruction position over `texts` (under whatever steering is active)."""
    lm = scorer.lm
    n_pos, n_tree = template_positions(scorer), len(scorer.readout.tree)
    modules = block_input_modules(lm)
    total = torch.zeros(len(modules), n_pos, lm.text_config.hidden_size, dtype=torch.float64)
    seen: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        h = output_tensor(output)
        end = h.shape[1] - n_tree
        seen.append(h[:, end - n_pos : end].double().sum(0).cpu())

    suffixes = [
        scorer.suffix_ids(scorer.encode(t, f"calibration prompt {i + 1}")) for i, t in enumerate(texts)
    ]
    order = sorted(range(len(texts)), key=lambda i: len(suffixes[i]))
    size = scorer.batch_size
    for chunk in progress([order[i : i + size] for i in range(0, len(order), size)], desc=desc, unit="batch"):
        seen.clear()
        scorer.forward(scorer.batch([suffixes[i] for i in chunk]), hook_pairs=[(m, keep) for m in modules])
        total += torch.stack(seen)
    return total / len(texts)


# ------------------------------------------------------------------------------------------ scores
@torch.no_grad()
def first_token_scores(scorer, texts: list[str]) -> tuple[np.ndarray, torch.Tensor]:
    """(decision margins [n], log-probabilities of the first response token [n, vocab] float32) of
    `texts`, under whatever steering is active."""
    suffixes = [scorer.suffix_ids(scorer.encode(t)) for t in texts]
    margins = np.zeros(len(texts))
    logps = torch.zeros(len(texts), scorer.lm.unembed.weight.shape[0])
    order = sorted(range(len(texts)), key=lambda i: len(suffixes[i]))  # similar lengths pad less
    for start in range(0, len(order), scorer.batch_size):
        chunk = order[start : start + scorer.batch_size]
        probe = MarginProbe(scorer.lm, scorer.readout)
        scorer.forward(scorer.batch([suffixes[i] for i in chunk]), hook_pairs=probe.hook_pairs())
        margins[chunk] = probe.margins().decision.cpu().numpy()
        logps[chunk] = scorer.lm.logits(probe.final_states[:, 0]).log_softmax(-1).float().cpu()
    return margins, logps


def kl_divergence(base: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over rows of KL(base || other), both log-probabilities [n, vocab]."""
    return float((base.exp() * (base - other)).sum(-1).mean())


@dataclass
class Selection:
    direction: RefusalDirection
    candidates: pd.DataFrame  # a row per (layer, position): screened and full val figures
    baseline: dict  # val margins with nothing steered


SCREEN = 8  # val prompts of each class every candidate is screened on
FINALISTS = 8  # eligible candidates, best screened first, measured on the whole val split


def _kept(scorer, texts: list[str], refused: bool, desc: str, by_margin: bool = True) -> list[str]:
    """The prompts the model treats as their class does: harmful ones it refuses (margin > 0), harmless
    ones it answers, as Arditi et al. filter theirs."""
    if not by_margin:
        return texts
    margins = scorer.score(texts, desc=desc).margin
    return [t for t, m in zip(texts, margins) if (m > 0) == refused]


def select_direction(
    scorer,
    train: tuple[list[str], list[str]],
    val: tuple[list[str], list[str]],
    kl_bound: float = KL_BOUND,
    last_layers: float = LAST_LAYERS,
    induce_min: float | None = None,
    screen: int = SCREEN,
    finalists: int = FINALISTS,
    by_margin: bool = True,
) -> Selection:
    """The refusal direction from (harmful, harmless) train and val prompts (module docstring):
    candidates in blocks before the last `last_layers` share of the stack, whose addition lifts the
    harmless mean margin above `induce_min` and whose ablation costs less than `kl_bound` in KL.
    `induce_min` None: halfway between the harmless and the harmful prompts' mean margins as they are
    (Arditi et al. ask for a refusal score above 0; on the default model no candidate's addition lifted
    the mean margin of answered harmless prompts past -0.47, from -4.42, while refused harmful ones
    average +1.32).

    Only prompts the model treats as their class count (harmful ones it refuses, harmless ones it
    answers; `by_margin` False: all). Every candidate is screened on the first `screen` val prompts of each class (the
    per-layer figure's numbers); the `finalists` eligible ones with the lowest screened bypass are
    measured on the whole val split and tried in order of that bypass, then the rest in screened order,
    until one passes the filters."""
    lm = scorer.lm
    harmful = _kept(scorer, train[0], True, "harmful train prompts", by_margin)
    harmless = _kept(scorer, train[1], False, "harmless train prompts", by_margin)
    val_harmful = _kept(scorer, val[0], True, "harmful val prompts", by_margin)
    val_harmless = _kept(scorer, val[1], False, "harmless val prompts", by_margin)
    counts = {
        "harmful_train": len(harmful),
        "harmless_train": len(harmless),
        "harmful_val": len(val_harmful),
        "harmless_val": len(val_harmless),
    }
    if min(counts.values()) < 2:
        raise InputError(
            f"too few calibration prompts the model treats as their class ({counts}): it refuses too little "
            "or too much under this condition to find a refusal direction"
        )
    diff = block_input_means(scorer, harmful, "harmful activations") - block_input_means(
        scorer, harmless, "harmless activations"
    )  # [L, P, d]
    n_layers, n_pos = diff.shape[:2]
    cutoff = math.floor(n_layers * (1 - last_layers))
    sets = {
        "screen": (val_harmful[:screen], val_harmless[:screen]),
        "val": (val_harmful, val_harmless),
    }
    base = {  # per set: harmful margins, harmless margins, harmless first-token log-probabilities
        k: (first_token_scores(scorer, bad)[0], *first_token_scores(scorer, good))
        for k, (bad, good) in sets.items()
    }

    def vec(i: int) -> torch.Tensor:
        return diff[int(table.at[i, "layer"]), int(table.at[i, "position"]) + n_pos].float()

    def measure(i: int, which: str, filters: bool = True) -> None:
        if not np.isnan(table.at[i, f"bypass_{which}"]) and (
            not filters or not np.isnan(table.at[i, f"kl_{which}"])
        ):
            return
        bad, good = sets[which]
        with steered(lm, Steering(vec(i), ablate=1.0)):
            table.at[i, f"bypass_{which}"] = float(first_token_scores(scorer, bad)[0].mean())
            if filters:
                table.at[i, f"kl_{which}"] = kl_divergence(
                    base[which][2], first_token_scores(scorer, good)[1]
                )
        if filters:
            with steered(lm, Steering(vec(i), add=1.0, at=int(table.at[i, "layer"]))):
                table.at[i, f"induce_{which}"] = float(first_token_scores(scorer, good)[0].mean())

    table = pd.DataFrame(
        [
            {
                "layer": layer,
                "position": pos - n_pos,
                "norm": float(diff[layer, pos].norm()),
                "eligible": layer < cutoff,
            }
            for layer in range(n_layers)
            for pos in range(n_pos)
        ]
    )
    for column in ("bypass_screen", "induce_screen", "kl_screen", "bypass_val", "induce_val", "kl_val"):
        table[column] = np.nan
    live = table.index[table["norm"] > 0]  # the embedding's output: the same template tokens, no difference
    for i in progress(list(live), desc="screening candidates (ablated)", unit="candidate"):
        measure(i, "screen", filters=False)
    best = table.loc[live].groupby("layer")["bypass_screen"].idxmin()
    for i in progress(list(best), desc="steering each layer's best", unit="layer"):
        measure(i, "screen")
    order = list(table.loc[live][table.loc[live, "eligible"]].sort_values("bypass_screen").index)
    top = order[:finalists]
    for i in progress(top, desc="finalists on the whole val split", unit="candidate"):
        measure(i, "val")
    if induce_min is None:
        induce_min = float(base["val"][0].mean() + base["val"][1].mean()) / 2
    chosen = None
    for i in sorted(top, key=lambda i: table.at[i, "bypass_val"]) + order[finalists:]:
        measure(i, "val")
        if table.at[i, "induce_val"] > induce_min and table.at[i, "kl_val"] < kl_bound:
            chosen = i
            break
    if not order:
        raise InputError(
            f"no candidate direction: the mean residuals of harmful and harmless prompts differ in no block "
            f"before block {cutoff} (the last {n_layers - cutoff} of {n_layers} are left out)"
        )
    if chosen is None:
        raise InputError(
            f"no candidate direction passes the filters (adding it lifts the harmless margin above "
            f"{induce_min:g}, KL under {kl_bound:g}, a block before {cutoff}; best lift "
            f"{np.nanmax(table['induce_val'].to_numpy(float), initial=-np.inf):+.2f}): this model may not "
            "refuse through one direction"
        )
    table["selected"] = table.index == chosen
    row = table.loc[chosen]
    baseline = {
        "harmful_margin": float(base["val"][0].mean()),
        "harmless_margin": float(base["val"][1].mean()),
        "screen_harmful_margin": float(base["screen"][0].mean()),
        "screen_harmless_margin": float(base["screen"][1].mean()),
    }
    details = {
        "selection": {
            "bypass": float(row["bypass_val"]),
            "induce": float(row["induce_val"]),
            "kl": float(row["kl_val"]),
            "kl_bound": kl_bound,
            "induce_min": induce_min,
            "last_layers_excluded": n_layers - cutoff,
            "candidates": int(len(live)),
            "measured_on_val": int(table["kl_val"].notna().sum()),
        },
        "prompts": counts | {"screen": screen},
        "baseline": baseline,
        "n_layers": n_layers,
        "template_positions": n_pos,
    }
    direction = RefusalDirection(vec(chosen), int(row["layer"]), int(row["position"]), details)
    return Selection(direction, table, baseline)


# ------------------------------------------------------------------------------------------ cache
def _calibration(name: str, n: int | None) -> list[str]:
    from lexprobe.toolkit.io.suites import load_suite

    return load_suite(name).frame["prompt"].tolist()[:n]


def find_direction(
    scorer,
    condition: str,
    train_prompts: int | None = None,
    val_prompts: int = 32,
    kl_bound: float = KL_BOUND,
    info: dict | None = None,
    overwrite: bool = False,
) -> tuple[RefusalDirection, pd.DataFrame]:
    """The direction of the scorer's model under `condition` (its system prompt, described), and its
    candidates table: cached per model, dtype, condition, readout and settings, else selected here on
    the bundled calibration splits (`train_prompts`, `val_prompts` of each class; None: all) and
    cached; `overwrite` selects again. `info` (provenance) goes into the direction's details."""
    from lexprobe.toolkit.io.cache import model_entry, write_text_atomic
    from lexprobe.toolkit.io.locks import building
    from lexprobe.toolkit.io.results import Timer, write_csv_atomic

    lm = scorer.lm
    key = {
        "dtype": dtype_name(lm.dtype),
        "system_prompt": condition,
        "readout": scorer.readout.sha256(),
        "train": train_prompts,
        "val": val_prompts,
        "kl_bound": kl_bound,
        "format": 1,
    }
    path, _ = model_entry("directions", lm, key)
    table = path.with_suffix(".csv")
    failed = path.with_suffix(".none")  # why the search found none: a model that refuses too little
    with building(path):
        if failed.exists() and not overwrite:
            raise InputError(
                f"{failed.read_text(encoding='utf-8').strip()} (found before and cached in {failed}; "
                "`lexprobe direction --overwrite` searches again)"
            )
        if path.exists() and table.exists() and not overwrite:
            try:
                text = path.read_text(encoding="utf-8")
                if '"sha256"' not in text:
                    raise InputError(f"{path} carries no sha256 (an older cache entry)")
                found = RefusalDirection.from_json(
                    text, str(path), lm.text_config.hidden_size, len(lm.layers)
                )
                log.info("refusal direction: cache %s", path)
                return found, pd.read_csv(table)
            except (InputError, OSError, UnicodeDecodeError, ValueError) as err:  # never used: found again
                log.warning("%s; finding the direction again", err)
        log.debug("finding the refusal direction of this model and condition once; later runs read %s", path)
        timer = Timer()
        n, v = train_prompts, val_prompts
        try:
            with unsteered(lm):  # the direction of the model as it is, whatever steering a study has on
                selection = select_direction(
                    scorer,
                    (_calibration("calibration-harmful", n), _calibration("calibration-harmless", n)),
                    (_calibration("calibration-harmful-val", v), _calibration("calibration-harmless-val", v)),
                    kl_bound=kl_bound,
                )
        except InputError as err:  # the same search would find none again: later runs are told at once
            write_text_atomic(failed, str(err))
            raise
        failed.unlink(missing_ok=True)
        direction = selection.direction
        direction.details.update(
            provenance=info or {},
            seconds=timer.seconds,
            data={
                "candidates": "calibration harmful/harmless, train split",
                "selection": "their val split",
                "n_train": n or "all",
                "n_val": v,
            },
        )
        write_csv_atomic(selection.candidates, table)
        write_text_atomic(path, direction.to_json())
        return direction, selection.candidates
