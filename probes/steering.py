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

A `Gate` makes a steering conditional (Lee et al.'s CAST, ICLR 2025, with a harmfulness probe as the
condition): each prompt's strength is multiplied by its gate, 1 where the harmfulness probe
(`probes.harmfulness`) reads it as harmless (logit below `threshold`) and 0 where harmful, or a
sigmoid of the distance for a soft gate (`width` > 0). The gate of a prompt is read in a pass of its
own, unsteered, over the formatted prompt, then the prompt runs steered at that strength at every
layer and position, its shared prefix included (a prefix KV cache is kept per strength). Whoever runs
a forward pass under a gated steering names the prompts of its rows (`gate_rows`; the scorer and
generation do); a pass that does not is an error, never silently steered or not.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from lexprobe.probes.harmfulness import HarmfulnessProbe, probe_logits
from lexprobe.probes.hooks import hooks
from lexprobe.toolkit.config import ABLATE_MAX, ADD_MAX
from lexprobe.toolkit.errors import InputError

GATE_BATCH = 16  # rows of a gate pass


@dataclass(frozen=True)
class Gate:
    """Steer a prompt in proportion to `scales(its harmfulness logit)` (module docstring)."""

    probe: HarmfulnessProbe
    threshold: float = 0.0  # steer where the probe's logit is below this
    width: float = 0.0  # 0: a hard gate; > 0: sigmoid((threshold - logit) / width)

    def __post_init__(self):
        if not np.isfinite(self.threshold) or not (np.isfinite(self.width) and self.width >= 0):
            raise ValueError("a gate's threshold is finite and its width finite and >= 0")

    def scales(self, logits) -> np.ndarray:
        z = np.asarray(logits, dtype=float)
        if self.width == 0:
            return (z < self.threshold).astype(float)
        return 1.0 / (1.0 + np.exp(np.clip((z - self.threshold) / self.width, -60, 60)))

    @property
    def key(self) -> str:
        return f"{self.probe.sha256()[:16]}<{self.threshold!r}~{self.width!r}"

    def describe(self) -> str:
        kind = "hard" if self.width == 0 else f"soft, width {self.width:g}"
        return f"where harmfulness < {self.threshold:g} ({kind}; probe at block {self.probe.layer}, position {self.probe.position})"


NORM_MAX = 1e4  # a direction's norm (a difference of mean activations); larger overflows in bf16


@dataclass(frozen=True)
class Steering:
    direction: torch.Tensor  # [d_model]
    ablate: float = 0.0  # share of the direction's component removed everywhere (1: all of it)
    add: float = 0.0  # multiple of the direction added at block `at`'s input
    at: int | None = None  # the block whose input receives the addition
    name: str = "steering"
    gate: Gate | None = None  # steer each prompt by its gate (None: every prompt fully)

    def __post_init__(self):
        if self.direction.ndim != 1 or not torch.isfinite(self.direction).all():
            raise ValueError("a steering direction is one finite vector [d_model]")
        if float(self.direction.norm()) == 0:
            raise ValueError("a steering direction cannot be the zero vector")
        if self.add and self.at is None:
            raise ValueError("an activation addition needs the block it adds at (`at`)")
        if self.add and self.ablate:  # the ablation would remove at every later block what was added
            raise ValueError("a steering ablates its direction or adds it, not both")
        if not (np.isfinite(self.ablate) and 0 <= self.ablate <= ABLATE_MAX):
            raise ValueError(f"ablate {self.ablate!r} is not a share from 0 to {ABLATE_MAX:g}")
        if not (np.isfinite(self.add) and abs(self.add) <= ADD_MAX):
            raise ValueError(f"add {self.add!r} is not a multiple from -{ADD_MAX:g} to {ADD_MAX:g}")
        if float(self.direction.norm()) > NORM_MAX:
            raise ValueError(
                f"a steering direction's norm is at most {NORM_MAX:g}, not {float(self.direction.norm()):.3g}"
            )
        if self.at is not None and (isinstance(self.at, bool) or not isinstance(self.at, int) or self.at < 0):
            raise ValueError(f"the block an addition goes in is a whole number of 0 or more, not {self.at!r}")

    @property
    def key(self) -> str:
        """The identity of this intervention (a prefix cache computed under another is stale)."""
        digest = hashlib.sha256(self.direction.detach().double().cpu().numpy().tobytes())
        digest.update(f"{self.ablate}|{self.add}|{self.at}".encode())
        if self.gate is not None:
            digest.update(self.gate.key.encode())
        return digest.hexdigest()[:16]

    def describe(self) -> str:
        parts = []
        if self.ablate:
            parts.append(f"ablate {self.name}" + ("" if self.ablate == 1 else f" x{self.ablate:g}"))
        if self.add:
            parts.append(f"add {self.add:+g} x {self.name} at block {self.at}")
        text = ", ".join(parts) or "none"
        return text if self.gate is None else f"{text}, {self.gate.describe()}"

    def to_dict(self) -> dict:
        """This steering as JSON-ready data (`from_dict` reads it back; the gate's probe included)."""
        out = {
            "name": self.name,
            "ablate": float(self.ablate),
            "add": float(self.add),
            "at": self.at,
            "vector": [float(x) for x in self.direction.detach().double().cpu()],
        }
        if self.gate is not None:
            probe = json.loads(self.gate.probe.to_json())
            out["gate"] = {"threshold": self.gate.threshold, "width": self.gate.width, "probe": probe}
        return out

    @classmethod
    def from_dict(cls, data: dict, source: str = "steering") -> Steering:
        """InputError where `data` is not a steering `to_dict` wrote, or its numbers are out of range."""
        try:
            vector = torch.tensor([float(x) for x in data["vector"]], dtype=torch.float32)
            at = data.get("at")
            if at is not None and (isinstance(at, bool) or not isinstance(at, int)):
                raise ValueError(f"block {at!r} is not a whole number")
            numbers = {k: data.get(k, 0.0) for k in ("ablate", "add")}
            for k, v in numbers.items():
                if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
                    raise ValueError(f"{k} {v!r} is not a finite number")
            gate = None
            if data.get("gate") is not None:
                g = data["gate"]
                probe = HarmfulnessProbe.from_json(json.dumps(g["probe"]), f"{source}'s gate probe")
                gate = Gate(probe, float(g["threshold"]), float(g.get("width", 0.0)))
            return cls(
                vector,
                float(numbers["ablate"]),
                float(numbers["add"]),
                at,
                str(data.get("name", "steering")),
                gate,
            )
        except InputError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise InputError(f"{source} is not a lexprobe steering ({type(err).__name__}: {err})") from None


class GateControl:
    """The gates of the rows of the forward pass under way (`lm.extra["gate"]` while a gated steering
    is on): a scale per row, set by `rows` (from the prompts' own harmfulness) or `uniform`."""

    def __init__(self, lm, gate: Gate, around: str = "", batch_size: int = GATE_BATCH):
        self.lm, self.gate, self.around, self.batch_size = lm, gate, around, batch_size
        self.scale: torch.Tensor | float | None = None  # [batch] or one value for every row

    def scales(self, rows: list[list[int]]) -> np.ndarray:
        """Each formatted prompt's gate [n] (its probe logit read without this gate's steering)."""
        with self.uniform(0.0):
            logits = gate_logits(self.lm, self.gate.probe, rows, self.batch_size, self.around)
        return self.gate.scales(logits)

    @contextmanager
    def rows(self, rows: list[list[int]]) -> Iterator[None]:
        """Passes inside run row i of a batch at its prompt's gate, `rows[i]` the whole formatted
        prompt (template head to template tail, nothing generated or appended)."""
        with self.scaled(torch.tensor(self.scales(rows), dtype=torch.float32)):
            yield

    @contextmanager
    def scaled(self, scale: torch.Tensor | float) -> Iterator[None]:
        """Passes inside run row i at `scale[i]` (a tensor [batch]) or every row at `scale` (a float)."""
        before, self.scale = self.scale, scale
        try:
            yield
        finally:
            self.scale = before

    def uniform(self, value: float):
        return self.scaled(float(value))

    def select(self, index: torch.Tensor) -> None:
        """Keep the rows at `index` (a batch whose finished rows leave it)."""
        self.scale = self.scale[index.cpu()]

    def factor(self, x: torch.Tensor) -> torch.Tensor | float:
        if self.scale is None:
            raise RuntimeError(
                "a forward pass ran under a gated steering without naming its prompts (GateControl.rows)"
            )
        if isinstance(self.scale, float):
            return self.scale
        if len(self.scale) != x.shape[0]:
            raise RuntimeError(f"a gated pass of {x.shape[0]} rows has gates for {len(self.scale)}")
        return self.scale.to(x.device)[(...,) + (None,) * (x.ndim - 1)]


GATE_MEMO = 50_000  # prompts whose gate logits a model keeps, per probe and surrounding steering


def gate_logits(
    lm, probe: HarmfulnessProbe, rows: list[list[int]], batch_size: int = GATE_BATCH, around: str = ""
):
    """The probe's logit [n] of each formatted prompt as a gate reads it (`probe_logits` over `rows`,
    under no steering but the ungated ones `around` names, "" for none), remembered per model, probe
    and `around`: the gates of one probe (hard, soft, any threshold) read each prompt once. Rows
    already known are not read again; the others are read together, in the order given."""
    memo = lm.extra.setdefault("gate_logits", {}).setdefault((probe.sha256(), around), {})
    keys = [np.asarray(r, dtype=np.int64).tobytes() for r in rows]  # compact: 8 bytes a token
    todo = {k: r for k, r in zip(keys, rows) if k not in memo}
    if todo:
        if len(memo) + len(todo) > GATE_MEMO:
            memo.clear()
        memo.update(zip(todo, probe_logits(lm, [list(r) for r in todo.values()], probe, batch_size)))
    return np.array([memo[k] for k in keys])


def gate_control(lm) -> GateControl | None:
    return lm.extra.get("gate")


def gate_rows(lm, rows: list[list[int]]):
    """A context in which passes run each row at its prompt's gate (nothing without a gated steering)."""
    control = gate_control(lm)
    return nullcontext() if control is None else control.rows(rows)


def ungated(lm):
    """A context whose passes run as the model is under a gated steering (a pass over text that is not
    a chat prompt, such as a fluency check: there is no prompt to gate on)."""
    control = gate_control(lm)
    return nullcontext() if control is None else control.uniform(0.0)


def _edit(
    x: torch.Tensor, steerings: list[Steering], block: int, control: GateControl | None
) -> torch.Tensor:
    """x [..., d_model]: the residual entering `block` (n_layers: the final residual), steered."""
    for s in steerings:
        d = s.direction.to(device=x.device, dtype=torch.float32)
        f = control.factor(x) if s.gate is not None else 1.0
        if isinstance(f, float) and f == 0.0:
            continue
        if s.add and s.at == block:
            x = (x.float() + (s.add * f) * d).to(x.dtype)
        if s.ablate:
            unit = d / d.norm()
            x = (x.float() - (s.ablate * f) * (x.float() @ unit)[..., None] * unit).to(x.dtype)
    return x


def hook_pairs(lm, steerings: list[Steering], token: object | None = None) -> list:
    """(module, forward hook) pairs: the embedding's output is block 0's input, block l's output is
    block l + 1's input, and the last block's output is the final residual. Hooks whose `token` is
    paused (`unsteered`) leave the output as it is."""
    modules = [lm.embed, *lm.layers]

    def hook_for(block: int):
        def hook(_module, _inputs, output):
            if token is not None and token in lm.extra.get("paused", ()):
                return None
            control = gate_control(lm)
            if isinstance(output, tuple):
                return (_edit(output[0], steerings, block, control), *output[1:])
            return _edit(output, steerings, block, control)

        return hook

    return [(m, hook_for(i)) for i, m in enumerate(modules)]


@contextmanager
def steered(lm, steering: Steering | list[Steering] | None) -> Iterator[None]:
    """Run everything inside under `steering` (none: as is); the hooks go on exit, whatever happens."""
    steerings = [] if steering is None else [steering] if isinstance(steering, Steering) else list(steering)
    key = "+".join(s.key for s in steerings)
    before, text_before = lm.extra.get("steering"), lm.extra.get("steering_text")
    if not steerings or key == before:  # nothing to do, or already steered so (a study inside a study)
        yield
        return
    for s in steerings:  # an addition at a block the model lacks would add nothing, silently
        if s.add and not 0 <= s.at < len(lm.layers):
            raise InputError(
                f"{s.name}: adds at block {s.at}, and this model has blocks 0 to {len(lm.layers) - 1}"
            )
    gates = [s.gate for s in steerings if s.gate is not None]
    if len(gates) > 1 or (gates and gate_control(lm) is not None):
        raise ValueError("one gated steering at a time")
    token = object()
    lm.extra["steering"] = key
    lm.extra["steering_text"] = "; ".join(s.describe() for s in steerings)
    lm.extra.setdefault("active", []).append(token)
    if gates:
        around = "+".join(k for k in (before, *(s.key for s in steerings if s.gate is None)) if k)
        lm.extra["gate"] = GateControl(lm, gates[0], around)
    try:
        with hooks(hook_pairs(lm, steerings, token)):
            yield
    finally:
        lm.extra["active"].remove(token)
        if gates:
            lm.extra.pop("gate", None)
        if before is None:
            lm.extra.pop("steering", None)
            lm.extra.pop("steering_text", None)
        else:
            lm.extra["steering"], lm.extra["steering_text"] = before, text_before


@contextmanager
def unsteered(lm) -> Iterator[None]:
    """Everything inside runs on the model as it is, whatever steering is on around it (a probe or a
    direction fitted for the cache inside a steered study); steerings begun inside apply as usual."""
    saved = {k: lm.extra.pop(k) for k in ("steering", "gate") if k in lm.extra}
    paused = list(lm.extra.get("active", []))
    before = lm.extra.get("paused", ())
    lm.extra["paused"] = (*before, *paused)
    try:
        yield
    finally:
        lm.extra["paused"] = before
        lm.extra.update(saved)
