"""The KV cache of a token prefix that every row of a batch shares (the chat template's opening and the
system prompt): computed once, then expanded to each batch, so scoring and generation run the model
only on what differs between prompts. It is computed again when the model's steering
(`probes.steering`, named in `lm.extra["steering"]`) is not the one it was computed under."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from transformers import DynamicCache


class SharedPrefix:
    def __init__(self, lm, ids: list[int]):
        self.lm, self.ids = lm, list(ids)
        self._kv: dict[float | None, list[tuple[torch.Tensor, torch.Tensor]]] = {}  # by gate strength
        self._steering: str | None = None  # the steering the cache was computed under

    def __len__(self) -> int:
        return len(self.ids)

    @torch.no_grad()
    def cache(self, batch_size: int) -> DynamicCache | None:
        """A fresh cache holding the prefix for `batch_size` rows (None for an empty prefix)."""
        if not self.ids:
            return None
        if self._steering != self.lm.extra.get("steering"):
            self._steering, self._kv = self.lm.extra.get("steering"), {}
        control = self.lm.extra.get("gate")
        scale = None if control is None else control.scale
        if not isinstance(scale, torch.Tensor):  # every row alike
            kv = self._computed(scale, control)
            cache = DynamicCache()
            for i, (k, v) in enumerate(kv):
                cache.update(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1), i)
            return cache
        values, rows = torch.unique(scale, return_inverse=True)  # one prefix per gate strength
        self._compute_many([float(x) for x in values if float(x) not in self._kv], control)
        kvs = [self._kv[float(x)] for x in values]
        rows = rows.to(self.lm.device)
        cache = DynamicCache()
        for i in range(len(kvs[0])):
            keys = torch.cat([kv[i][0] for kv in kvs])[rows]
            vals = torch.cat([kv[i][1] for kv in kvs])[rows]
            cache.update(keys, vals, i)
        for x in values.tolist():  # a soft gate's strengths are each prompt's own: keep only shut and open
            if x not in (0.0, 1.0):
                self._kv.pop(x, None)
        return cache

    def _computed(self, scale: float | None, control) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prefix's keys and values [1, heads, prefix, head_dim] per layer, at a gate strength
        (None: no gate)."""
        if scale not in self._kv:
            self._compute_many([scale], control)
        return self._kv[scale]

    @torch.no_grad()
    def _compute_many(self, scales: list, control, rows: int = 64) -> None:
        """`_computed` at each of `scales`, `rows` strengths a pass (a soft gate gives each prompt its
        own): one row per strength, not a pass each."""
        for start in range(0, len(scales), rows):
            chunk = scales[start : start + rows]
            gated = (
                nullcontext() if control is None else control.scaled(torch.tensor(chunk, dtype=torch.float32))
            )
            with (
                gated
            ):  # a cache of full layers: a sliding-window one would drop keys the suffix's mask counts
                out = self.lm.base(
                    input_ids=torch.tensor([self.ids] * len(chunk), device=self.lm.device),
                    cache=DynamicCache(),
                    use_cache=True,
                )
            layers = [(layer.keys, layer.values) for layer in out.cache.layers]
            for j, value in enumerate(chunk):
                self._kv[value] = [(k[j : j + 1], v[j : j + 1]) for k, v in layers]
