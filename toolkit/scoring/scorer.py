"""Batched forward passes that feed probes, reusing the shared prefix's KV cache.

Every prompt of one system-prompt condition starts with the same tokens (template head + system
prompt). Their keys and values are computed once and expanded over each batch; only the suffix (user
text, template tail, readout tokens) runs through the model. Suffixes are left-padded *after* the
prefix, with explicit position ids, so a batched row sees exactly what it would see alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lexprobe.probes.hooks import block_input_modules, hooks, output_tensor
from lexprobe.probes.margin import MarginProbe, Margins, RefusalReadout
from lexprobe.probes.steering import gate_rows
from lexprobe.toolkit.errors import InputError, NonFiniteError
from lexprobe.toolkit.io.progress import progress
from lexprobe.toolkit.models.chat import ChatFormat, ChatPrompt
from lexprobe.toolkit.models.prefix import SharedPrefix


@dataclass
class Batch:
    """Left-padded suffixes + the readout tree. ids [batch, q]; attention_mask [batch, 1, q, prefix + q],
    restricted to the window for a model whose every layer slides (Mistral, Phi-3), or one such mask per
    layer type (`{"full_attention": ..., "sliding_attention": ...}`) where some do (Gemma 2/3)."""

    ids: torch.Tensor
    attention_mask: torch.Tensor | dict[str, torch.Tensor]
    position_ids: torch.Tensor
    rows: list[list[int]] | None = None  # each row's whole formatted prompt (a gated steering reads it)

    def repeat(self, n: int) -> Batch:
        """A batch of one row as `n` rows (no copies)."""
        mask = self.attention_mask
        return Batch(
            self.ids.expand(n, -1),
            {k: m.expand(n, -1, -1, -1) for k, m in mask.items()}
            if isinstance(mask, dict)
            else mask.expand(n, -1, -1, -1),
            self.position_ids.expand(n, -1),
            (self.rows or []) * n,
        )


@dataclass
class MarginScores:
    margin: np.ndarray  # [n] decision margin; > 0 where greedy decoding refuses
    margin_sampled: np.ndarray  # [n] log P(refuse) - log P(comply) under sampling at T=1
    layer_margins: np.ndarray | None = None  # [n, n_layers] decision margin by logit lens
    harmfulness: np.ndarray | None = None  # [n] the harmfulness probe's logit (> 0: represented harmful)

    @property
    def p_refuse(self) -> np.ndarray:
        return _sigmoid(self.margin)

    @property
    def p_refuse_sampled(self) -> np.ndarray:
        return _sigmoid(self.margin_sampled)

    def take(self, idx) -> MarginScores:
        layers = None if self.layer_margins is None else self.layer_margins[idx]
        harm = None if self.harmfulness is None else self.harmfulness[idx]
        return MarginScores(self.margin[idx], self.margin_sampled[idx], layers, harm)


class Scorer:
    """Refusal margins for many user texts under one model, chat format and readout; with a
    `harmfulness` probe (`probes.harmfulness`), its logit too, read in the same pass."""

    def __init__(self, lm, fmt: ChatFormat, readout: RefusalReadout, batch_size: int = 16, harmfulness=None):
        if batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {batch_size}")
        self.lm, self.fmt, self.readout, self.batch_size = lm, fmt, readout, batch_size
        self.harmfulness = harmfulness
        self.prefix = SharedPrefix(lm, fmt.prefix_ids)
        self.prefix_len = len(self.prefix)

    # ----------------------------------------------------------------------------- inputs
    def encode(self, text: str, name: str = "prompt") -> ChatPrompt:
        prompt = self.fmt.format(text)
        n = len(prompt.input_ids) + len(self.readout.tree)
        if n > self.lm.context_length:
            raise InputError(
                f"{name} is {n} tokens with its chat template, longer than the model's context of "
                f"{self.lm.context_length}: shorten it or drop it"
            )
        return prompt

    def suffix_ids(self, prompt: ChatPrompt) -> list[int]:
        return prompt.input_ids[self.prefix_len :]

    def batch(self, suffixes: list[list[int]]) -> Batch:
        """Left-pad the suffixes and append the readout's token tree to each row.

        The attention mask is 4D ([batch, 1, query, prefix + query], additive float): suffix tokens are
        causal and skip padding; each tree token sees the real suffix and its own tree ancestors.
        """
        p, t = self.prefix_len, len(self.readout.tree)
        width = max(len(s) for s in suffixes)
        q = width + t
        ids = torch.full((len(suffixes), q), self.lm.pad_token_id, dtype=torch.long)
        real = torch.zeros((len(suffixes), width), dtype=torch.bool)
        for row, suffix in enumerate(suffixes):
            ids[row, width - len(suffix) : width] = torch.tensor(suffix, dtype=torch.long)
            real[row, width - len(suffix) :] = True
        ids[:, width:] = torch.tensor(self.readout.extra_tokens, dtype=torch.long)
        allowed = torch.zeros((len(suffixes), q, p + q), dtype=torch.bool)
        allowed[:, :, :p] = True
        causal = torch.tril(torch.ones((width, width), dtype=torch.bool))
        allowed[:, :width, p : p + width] = causal & real[:, None, :]
        allowed[:, torch.arange(width), p + torch.arange(width)] = (
            True  # padding rows see themselves (no NaN)
        )
        allowed[:, width:, p : p + width] = real[:, None, :]
        allowed[:, width:, p + width :] = self.readout.tree_ancestors()
        n_real = real.sum(dim=1, keepdim=True)
        positions = torch.cat(
            [
                (p + real.long().cumsum(dim=1) - 1).clamp_min(p),
                p + n_real + torch.tensor(self.readout.tree_depths(), dtype=torch.long)[None, :],
            ],
            dim=1,
        )
        dev = self.lm.device
        rows = [self.prefix.ids + list(s) for s in suffixes]
        window, everywhere = self.lm.attention_window
        mask = self._additive(allowed)
        if window is not None:  # a query at position i sees keys at positions j > i - window
            keys = torch.cat([torch.arange(p).expand(len(suffixes), -1), positions], dim=1)
            sliding = self._additive(allowed & (positions[:, :, None] - keys[:, None, :] < window))
            mask = sliding if everywhere else {"full_attention": mask, "sliding_attention": sliding}
        return Batch(ids.to(dev), mask, positions.to(dev), rows)

    def _additive(self, allowed: torch.Tensor) -> torch.Tensor:
        """[batch, q, k] booleans -> [batch, 1, q, k] additive float mask in the model's dtype, on its device."""
        dtype = self.lm.dtype
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
        return mask[:, None].to(self.lm.device)

    # ----------------------------------------------------------------------------- model
    def forward(self, batch: Batch, inputs_embeds: torch.Tensor | None = None, hook_pairs=()) -> None:
        """Run the decoder stack on a batch (token ids, or embeddings [batch, seq, d_model] for gradients),
        with forward hooks registered for this pass only (not for the prefix's)."""
        with gate_rows(self.lm, batch.rows or []):
            cache = self.prefix.cache(batch.ids.shape[0])
            with hooks(hook_pairs):
                self.lm.base(
                    input_ids=None if inputs_embeds is not None else batch.ids,
                    inputs_embeds=inputs_embeds,
                    attention_mask=batch.attention_mask,
                    position_ids=batch.position_ids,
                    cache=cache,
                    use_cache=cache is not None,
                )

    def margins_for(
        self,
        batch: Batch,
        inputs_embeds: torch.Tensor | None = None,
        layers: bool = False,
        temperature: float | None = None,
        hook_pairs=(),
    ) -> tuple[Margins, torch.Tensor | None]:
        """(the margins of each row [batch], per-layer decision margins [batch, n_layers] or None);
        differentiable when `inputs_embeds` requires grad; `smooth` only with a temperature. `hook_pairs`
        read the same pass."""
        probe = MarginProbe(self.lm, self.readout, layers=layers)
        self.forward(batch, inputs_embeds, [*probe.hook_pairs(), *hook_pairs])
        return probe.margins(temperature), (probe.layer_margins() if layers else None)

    # ----------------------------------------------------------------------------- public
    @torch.no_grad()
    def score(
        self,
        texts: list[str],
        layers: bool = False,
        desc: str = "scoring",
        on_batch=None,
        ids: list[str] | None = None,
    ) -> MarginScores:
        """Margins for `texts`, in order. `on_batch(indices, MarginScores)` is called as batches finish.
        Every text is checked against the context length before any forward pass; `ids` name them in errors."""
        names = (
            [f"prompt id {i}" for i in ids]
            if ids is not None
            else [f"prompt {i + 1}" for i in range(len(texts))]
        )
        prompts = [self.encode(t, name) for t, name in zip(texts, names)]
        suffixes = [self.suffix_ids(p) for p in prompts]
        out = MarginScores(
            np.zeros(len(texts)),
            np.zeros(len(texts)),
            np.zeros((len(texts), len(self.lm.layers))) if layers else None,
            np.zeros(len(texts)) if self.harmfulness is not None else None,
        )
        with progress(None, desc=desc, total=len(texts), unit="prompt") as bar:  # counts what desc names
            for chunk in self.chunks(suffixes):
                self._score_batch(chunk, suffixes, names, layers, out, on_batch)
                bar.update(len(chunk))
        return out

    def chunks(self, suffixes: list[list[int]]) -> list[list[int]]:
        """The indices of the prompts of each batch `score` runs, in order (by suffix length: similar
        lengths pad less)."""
        order = sorted(range(len(suffixes)), key=lambda i: len(suffixes[i]))
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _score_batch(
        self, chunk: list[int], suffixes, names, layers: bool, out: MarginScores, on_batch
    ) -> None:
        """One batch of `score`: its rows of `out` filled, then `on_batch` told."""
        read, pairs = self.harmfulness_reader()
        try:
            margins, per_layer = self.margins_for(
                self.batch([suffixes[i] for i in chunk]), layers=layers, hook_pairs=pairs
            )
        except NonFiniteError as err:  # say which prompts (rows written so far stay)
            raise err.named([names[chunk[r]] for r in err.rows]) from None
        if read:
            out.harmfulness[chunk] = read[0]
        out.margin[chunk] = margins.decision.cpu().numpy()
        out.margin_sampled[chunk] = margins.sampled.cpu().numpy()
        if layers:
            out.layer_margins[chunk] = per_layer.cpu().numpy()
        if on_batch is not None:
            on_batch(chunk, out.take(chunk))

    def harmfulness_reader(self) -> tuple[list[np.ndarray], list]:
        """(a list the next pass's harmfulness logits [batch] land in, the hook pairs that read them)."""
        probe = self.harmfulness
        if probe is None:
            return [], []
        got: list[np.ndarray] = []
        n_tree = len(self.readout.tree)

        def read(_module, _inputs, output):
            h = output_tensor(output)  # [batch, seq, d_model]; the prompt ends n_tree tokens from the end
            got.append(probe.logits(h[:, h.shape[1] - n_tree + probe.position]).double().cpu().numpy())

        return got, [(block_input_modules(self.lm)[probe.layer], read)]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))
