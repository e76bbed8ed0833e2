"""The harmfulness probe: a linear read-out of whether the model represents a prompt as harmful,
apart from whether it refuses it.

A probe is a weight vector and bias on the residual stream entering block `layer`, read at one
token of the prompt: `position` counts from the end of the chat-formatted prompt (-1: the template's
last token; -(template tokens + 1): the last token of the user's instruction). Its logit `h . w + b`
is > 0 where the prompt is represented as harmful. It is fitted and selected on calibration prompts
(`toolkit.mechanism.harmfulness`); here it is only read.

`probe_logits` reads it in a pass of its own over the formatted prompts, stopping after the block it
needs (what a harmfulness gate runs before the steered pass, `probes.steering`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from lexprobe.probes.hooks import block_input_modules, hooks, output_tensor
from lexprobe.toolkit.errors import InputError

log = logging.getLogger(__name__)
FORMAT = 1


@dataclass
class HarmfulnessProbe:
    weight: torch.Tensor  # [d_model], in the residual stream's own units
    bias: float
    layer: int  # the block whose input it reads (0: the embedding's output)
    position: int  # counted from the end of the formatted prompt (-1: its last token)
    method: str = "logistic"  # "logistic" or "mean_difference"
    details: dict = field(default_factory=dict)  # provenance and the val figures

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """h [..., d_model] -> [...] float32: > 0 where represented as harmful."""
        return h.float() @ self.weight.to(device=h.device, dtype=torch.float32) + self.bias

    def sha256(self) -> str:
        """The identity of the probe's numbers (a cached or edited file is checked against it)."""
        digest = hashlib.sha256(self.weight.detach().double().cpu().numpy().tobytes())
        digest.update(f"{float(self.bias)!r}|{self.layer}|{self.position}|{self.method}".encode())
        return digest.hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {
                "kind": "harmfulness_probe",
                "format": FORMAT,
                "layer": self.layer,
                "position": self.position,
                "method": self.method,
                "bias": float(self.bias),
                "weight": [float(x) for x in self.weight.double()],
                "sha256": self.sha256(),
                "details": self.details,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, source: str = "harmfulness probe", d_model: int | None = None):
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("kind") != "harmfulness_probe":
                raise ValueError("not a harmfulness probe")
            weight = torch.tensor(data["weight"], dtype=torch.float32)
            for name in ("layer", "position"):
                if not isinstance(data[name], int) or isinstance(data[name], bool):
                    raise ValueError(f"{name} {data[name]!r} is not a whole number")
            method = data.get("method", "logistic")
            if method not in ("logistic", "mean_difference"):
                raise ValueError(f"method {method!r} is neither logistic nor mean_difference")
            probe = cls(
                weight,
                float(data["bias"]),
                data["layer"],
                data["position"],
                method,
                dict(data.get("details") or {}),
            )
        except (ValueError, KeyError, TypeError) as err:
            raise InputError(
                f"{source} is not a lexprobe harmfulness probe ({err}): write one with `lexprobe harmfulness`"
            ) from None
        if weight.ndim != 1 or not torch.isfinite(weight).all() or not np.isfinite(probe.bias):
            raise InputError(f"{source}: its weights are not one finite vector")
        if float(weight.norm()) == 0:
            raise InputError(f"{source}: its weight vector is zero")
        if probe.position >= 0:
            raise InputError(f"{source}: position {probe.position} must count from the end (-1, -2, ...)")
        if data.get("sha256") != probe.sha256():
            raise InputError(f"{source}: its numbers do not match its sha256 (edited or damaged)")
        if d_model is not None and len(weight) != d_model:
            raise InputError(
                f"{source} is a probe of a model with d_model {len(weight)}, this one has {d_model}"
            )
        return probe

    def check(self, lm, source: str = "the harmfulness probe") -> None:
        """InputError unless this probe fits `lm` (width, depth)."""
        d = lm.text_config.hidden_size
        if len(self.weight) != d:
            raise InputError(
                f"{source} is a probe of a model with d_model {len(self.weight)}, this one has {d}"
            )
        if not 0 <= self.layer < len(lm.layers):
            raise InputError(
                f"{source} reads block {self.layer}; this model has blocks 0 to {len(lm.layers) - 1}"
            )


class _Enough(Exception):
    """Raised by the hook once the probe's block input is read: the rest of the pass is not needed."""


@torch.no_grad()
def probe_logits(lm, rows: list[list[int]], probe: HarmfulnessProbe, batch_size: int = 16) -> np.ndarray:
    """The probe's logit [n] float64 for each row of token ids (a whole formatted prompt, template
    head to template tail), in a pass of its own that stops after the probe's block."""
    out = np.zeros(len(rows))
    module = block_input_modules(lm)[probe.layer]
    got: list[torch.Tensor] = []

    def read(_module, _inputs, output):
        got.append(probe.logits(output_tensor(output)[:, probe.position]))
        raise _Enough

    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(rows[i]) for i in chunk)
        if -probe.position > min(len(rows[i]) for i in chunk):
            raise InputError(f"a prompt is shorter than the probe's position {probe.position}")
        ids = torch.full((len(chunk), width), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for b, i in enumerate(chunk):
            ids[b, width - len(rows[i]) :] = torch.tensor(rows[i], dtype=torch.long)
            mask[b, width - len(rows[i]) :] = 1
        positions = (mask.cumsum(dim=1) - 1).clamp_min(0)
        got.clear()
        try:
            with hooks([(module, read)]):
                lm.base(
                    input_ids=ids.to(lm.device),
                    attention_mask=mask.to(lm.device),
                    position_ids=positions.to(lm.device),
                    use_cache=False,
                )
        except _Enough:
            pass
        out[chunk] = got[0].double().cpu().numpy()
    return out


def load_probe(source, lm=None) -> HarmfulnessProbe:
    """A probe.json of `lexprobe harmfulness` (or the folder that holds one), or a `HarmfulnessProbe`
    itself (the Python API), checked against `lm`'s width and depth: InputError otherwise."""
    from pathlib import Path

    source = getattr(source, "probe", source)  # a HarmfulnessResult stands for its probe
    if isinstance(source, HarmfulnessProbe):
        probe, name = source, "the harmfulness probe given"
    else:
        path = Path(source).expanduser()
        if path.is_dir():
            if not (path / "probe.json").is_file():
                raise InputError(
                    f"harmfulness probe '{source}' is a directory with no probe.json: give a `lexprobe harmfulness` output"
                )
            path = path / "probe.json"
        if not path.is_file():
            raise InputError(
                f"harmfulness probe '{source}' does not exist: give a probe.json of `lexprobe harmfulness`"
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise InputError(f"harmfulness probe '{path}' cannot be read as UTF-8 JSON ({err})") from None
        probe, name = HarmfulnessProbe.from_json(text, str(path)), str(path)
    if lm is not None:
        probe.check(lm, name)
        from lexprobe.toolkit.models.devices import dtype_name

        fitted_in = (probe.details.get("provenance") or {}).get("dtype")
        if fitted_in and fitted_in != dtype_name(lm.dtype):
            log.warning(
                "%s was fitted in %s and reads this %s run: its logits can differ a little (pass --dtype %s "
                "to read it as fitted)",
                name,
                fitted_in,
                dtype_name(lm.dtype),
                fitted_in,
            )
    return probe
