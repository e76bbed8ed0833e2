"""Fixes for over-refusal made from lexprobe's own prompts, chosen by a stated rule on data that is not
the evaluation suite, and the file a chosen fix travels in.

- **False-refusal vector** (Wang et al., ICLR 2025): the mean residual, at the refusal direction's
  block and template position, over the harmless prompts lexprobe makes that the model refuses (the
  mention and topic frames of the harmful calibration train instructions and the trigger rewrites of
  the harmless ones, `toolkit.substitution.frames.calibration_sets`), minus the mean over the
  harmless calibration train instructions it answers. Wang et al. orthogonalise it against the
  refusal direction only partly: `vector(c)` removes the share `c` of its component along the
  direction (c = 1: a full projection, c = 0: none).
- **Conditional ablation** (after Lee et al.'s CAST, ICLR 2025): the refusal direction ablated only
  for prompts the harmfulness probe reads as harmless (`probes.steering.Gate`). The hard gate's
  threshold is `choose_threshold`'s on the selection split.
- **The rule** (`choose`): on the selection split (the calibration val split with its own frames and
  hard negatives), the setting with the lowest safe refusal rate among those whose unsafe refusal rate
  falls by at most `max_unsafe_drop` (5 points) from the model as it is; ties go to the setting listed
  first (the milder one). Where none lowers safe refusal, the model as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lexprobe.probes.steering import Steering
from lexprobe.toolkit.errors import InputError

log = logging.getLogger(__name__)

MAX_UNSAFE_DROP = 0.05
KIND = "lexprobe_steering"
FORMAT = 1


@dataclass
class FalseRefusal:
    raw: torch.Tensor  # [d_model] mean(refused harmless frames) - mean(answered harmless), float64
    unit: torch.Tensor  # [d_model] the refusal direction, unit length, float64
    info: dict = field(default_factory=dict)  # prompts tried and kept, cosine with the direction

    def vector(self, coefficient: float) -> torch.Tensor:
        """The vector with the share `coefficient` of its component along the refusal direction removed."""
        return (self.raw - coefficient * (self.raw @ self.unit) * self.unit).float()


def false_refusal(scorer, direction, sets: dict, minimum: int = 8) -> tuple[FalseRefusal | None, dict]:
    """(the false-refusal vector from `calibration_sets`' train split (module docstring), or None where
    the model refuses fewer than `minimum` of lexprobe's harmless prompts or answers fewer than
    `minimum` harmless instructions; how many were tried and kept, either way)."""
    from lexprobe.toolkit.mechanism.harmfulness import HARD, prompt_states

    texts, labels, kinds = sets["train"]
    kinds = np.asarray(kinds)
    made = [t for t, k in zip(texts, kinds) if k in HARD]
    plain = [t for t, k in zip(texts, kinds) if k == "harmless"]
    layer, position = direction.layer, direction.position
    log.warning(
        "building the false-refusal vector once for this model and condition (then cached): scoring %d "
        "harmless prompts lexprobe made and %d harmless calibration prompts, %d batches",
        len(made),
        len(plain),
        sum(math.ceil(n / scorer.batch_size) for n in (len(made), len(plain))),
    )
    states, margins = prompt_states(scorer, made, "harmless prompts lexprobe made", [layer])
    base, base_margins = prompt_states(scorer, plain, "harmless calibration prompts", [layer])
    refused, answered = margins > 0, base_margins < 0
    made_kinds = kinds[np.isin(kinds, HARD)]
    info = {
        "tried": len(made),
        "kept_refused": int(refused.sum()),
        "kept_by_kind": {k: int(refused[made_kinds == k].sum()) for k in dict.fromkeys(made_kinds)},
        "tried_by_kind": {k: int((made_kinds == k).sum()) for k in dict.fromkeys(made_kinds)},
        "harmless_answered": int(answered.sum()),
        "harmless_tried": len(plain),
        "site": {"layer": layer, "position": position},
    }
    if refused.sum() < minimum or answered.sum() < minimum:
        return None, info
    # states [n, 1, positions, d]: the position counts from the prompt's end, as the direction's does
    at = states.shape[2] + position
    raw = states[refused][:, 0, at].double().mean(0) - base[answered][:, 0, at].double().mean(0)
    unit = direction.vector.double() / direction.vector.double().norm()
    info["cosine_with_refusal_direction"] = float(raw @ unit / raw.norm())
    info["norm"] = float(raw.norm())
    return FalseRefusal(raw, unit, info), info


def refusal_rates(margins: np.ndarray, is_safe: np.ndarray) -> tuple[float, float]:
    """(share of safe prompts refused, share of unsafe prompts refused), refused meaning margin > 0."""
    refused = np.asarray(margins) > 0
    return float(refused[is_safe].mean()), float(refused[~is_safe].mean())


def choose_threshold(
    logits: np.ndarray,
    plain: np.ndarray,
    ablated: np.ndarray,
    is_safe: np.ndarray,
    max_unsafe_drop: float = MAX_UNSAFE_DROP,
) -> tuple[float, dict]:
    """The hard gate's threshold: prompts whose harmfulness logit is below it take their `ablated`
    margin, the rest their `plain` one. The threshold with the lowest safe refusal rate among those
    that lower the unsafe rate by at most `max_unsafe_drop` (ties: the lowest threshold, the gate that
    opens least); every candidate lies halfway between two neighbouring logits."""
    z = np.sort(np.unique(np.asarray(logits, dtype=float)))
    candidates = np.concatenate([[z[0] - 1.0], (z[1:] + z[:-1]) / 2, [z[-1] + 1.0]])
    safe0, unsafe0 = refusal_rates(plain, is_safe)
    best, best_safe = candidates[0], safe0
    for t in candidates:
        safe, unsafe = refusal_rates(np.where(logits < t, ablated, plain), is_safe)
        if unsafe0 - unsafe <= max_unsafe_drop + 1e-12 and safe < best_safe - 1e-12:
            best, best_safe = t, safe
    open_share = float((logits < best).mean())
    return float(best), {
        "safe_refusal_rate": best_safe,
        "open_share": open_share,
        "candidates": len(candidates),
    }


def choose(rows: list[dict], max_unsafe_drop: float = MAX_UNSAFE_DROP) -> int:
    """The index of the chosen row (module docstring's rule) among rows with `safe_refusal_rate`,
    `unsafe_refusal_rate` and `eligible`; row 0 is the model as it is."""
    safe0, unsafe0 = rows[0]["safe_refusal_rate"], rows[0]["unsafe_refusal_rate"]
    best, best_safe = 0, safe0
    for i, row in enumerate(rows):
        if not row.get("eligible", True):
            continue
        if (
            unsafe0 - row["unsafe_refusal_rate"] <= max_unsafe_drop + 1e-12
            and row["safe_refusal_rate"] < best_safe - 1e-12
        ):
            best, best_safe = i, row["safe_refusal_rate"]
    return best


def frontier(safe: np.ndarray, unsafe: np.ndarray) -> np.ndarray:
    """Which settings no other beats on both rates (lower safe refusal, higher unsafe refusal; a tie
    on one and a win on the other beats)."""
    safe, unsafe = np.asarray(safe, float), np.asarray(unsafe, float)
    out = np.ones(len(safe), dtype=bool)
    for i in range(len(safe)):
        better = (safe <= safe[i]) & (unsafe >= unsafe[i]) & ((safe < safe[i]) | (unsafe > unsafe[i]))
        out[i] = not better.any()
    return out


# ------------------------------------------------------------------------------------------ the file
def chosen_json(steering: Steering | None, meta: dict) -> str:
    """chosen.json: the chosen steering (None: the model as it is) with `meta` (model, rule, figures),
    and a sha256 of its numbers that `load_chosen` checks."""
    data = {
        "kind": KIND,
        "format": FORMAT,
        **meta,
        "steering": None if steering is None else steering.to_dict(),
    }
    data["sha256"] = _digest(data)
    return json.dumps(data, indent=1)


def _digest(data: dict) -> str:
    """The sha256 of the whole record but its own sha256 (numbers and what they are said to be)."""
    body = {k: v for k, v in data.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def load_chosen(source, lm=None, flag: str = "--steer") -> tuple[Steering | None, dict]:
    """(the steering, the whole record) of a chosen.json of `lexprobe mitigate` (or the folder holding
    one, or a MitigateResult), checked: its kind, format and sha256, and against `lm` its width, depth
    and weights. `flag` names where the file was given, in errors."""
    if hasattr(source, "chosen"):  # a MitigateResult
        if source.chosen is None:
            raise InputError("this mitigate result holds no chosen setting")
        name, text = "the mitigate result's chosen setting", source.chosen
    else:
        path = Path(source).expanduser()
        name = f"{flag} '{source}'"
        if path.is_dir():
            if not (path / "chosen.json").is_file():
                raise InputError(
                    f"{name} is a directory with no chosen.json: give a `lexprobe mitigate` output"
                )
            path = path / "chosen.json"
        elif not path.is_file():
            raise InputError(f"{name} does not exist: give a chosen.json of `lexprobe mitigate`")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(
                f"{name} cannot be read as UTF-8 ({type(err).__name__}): give a chosen.json"
            ) from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise InputError(f"{name} is not JSON ({err}): give a chosen.json of `lexprobe mitigate`") from None
    if not isinstance(data, dict) or data.get("kind") != KIND:
        raise InputError(f"{name} is not a chosen.json of `lexprobe mitigate` (no kind '{KIND}')")
    if data.get("format") != FORMAT or isinstance(data.get("format"), bool):
        raise InputError(f"{name} has format {data.get('format')!r}; this lexprobe reads format {FORMAT}")
    if data.get("sha256") != _digest(data):
        raise InputError(f"{name}: its contents do not match its sha256 (edited or damaged)")
    model = data.get("model")
    if model is not None and not isinstance(model, dict):
        raise InputError(
            f"{name}: its model is {type(model).__name__}, not a record of the model it was chosen for"
        )
    steering = None
    if data.get("steering") is not None:
        if not isinstance(data["steering"], dict):
            raise InputError(f"{name}: its steering is not a record")
        steering = Steering.from_dict(data["steering"], name)
    if lm is not None:
        model = model or {}
        if model.get("weights_sha256") and model["weights_sha256"] != lm.weights_sha256:
            raise InputError(
                f"{name} was chosen for the model {model.get('model_spec')!r} "
                f"(weights {str(model['weights_sha256'])[:12]}), not this one ({lm.weights_sha256[:12]}): "
                "run `lexprobe mitigate` on this model"
            )
        if steering is not None:
            check_steering(steering, lm, name)
    return steering, data


def check_steering(steering: Steering, lm, source: str) -> None:
    """InputError unless the steering fits `lm`: its width, its block, its gate's probe."""
    d, n = lm.text_config.hidden_size, len(lm.layers)
    if len(steering.direction) != d:
        raise InputError(f"{source} steers a model with d_model {len(steering.direction)}; this one has {d}")
    if steering.at is not None and not 0 <= steering.at < n:
        raise InputError(f"{source} adds at block {steering.at}; this model has blocks 0 to {n - 1}")
    if steering.gate is not None:
        steering.gate.probe.check(lm, f"{source}'s gate probe")
