"""The KV cache of a token prefix that every row of a batch shares (the chat template's opening and the
system prompt): computed once, then expanded to each batch, so scoring and generation run the model
only on what differs between prompts. It is computed again when the model's steering
(`probes.steering`, named in `lm.extra["steering"]`) is not the one it was computed under."""

from __future__ import annotations

import torch
from transformers import DynamicCache


class SharedPrefix:
    def __init__(self, lm, ids: list[int]):
        self.lm, self.ids = lm, list(ids)
        self._kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._steering: str | None = None  # the steering the cache was computed under

    def __len__(self) -> int:
        return len(self.ids)

    @torch.no_grad()
    def cache(self, batch_size: int) -> DynamicCache | None:
        """A fresh cache holding the prefix for `batch_size` rows (None for an empty prefix)."""
        if not self.ids:
            return None
        if self._kv is None or self._steering != self.lm.extra.get("steering"):
            self._steering = self.lm.extra.get("steering")
            out = self.lm.base(input_ids=torch.tensor([self.ids], device=self.lm.device), use_cache=True)
            self._kv = [(layer.keys, layer.values) for layer in out.cache.layers]
        cache = DynamicCache()
        for i, (k, v) in enumerate(self._kv):
            cache.update(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1), i)
        return cache
