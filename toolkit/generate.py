"""Batched greedy generation with a KV cache and left padding (transformers' `generate`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig

from toolkit.chat import ChatFormat
from toolkit.errors import LexprobeError
from toolkit.progress import progress


@dataclass
class Completion:
    text: str
    token_ids: list[int]  # generated ids, cut before the first stop token
    stopped: bool  # False where max_new_tokens ran out first


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [batch, seq] and attention mask [batch, seq], left-padded."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def generate(
    lm,
    fmt: ChatFormat,
    texts: list[str],
    max_new_tokens: int = 256,
    batch_size: int = 16,
    forced_prefix: list[int] | None = None,
    desc: str = "generating",
    on_batch=None,
) -> list[Completion]:
    """Greedy completions of `texts`, in order. `forced_prefix` token ids are appended to every prompt
    (and included in the returned ids). `on_batch(indices, completions)` is called as batches finish."""
    if max_new_tokens < 1:
        raise LexprobeError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    forced = list(forced_prefix or [])
    inputs = []
    for i, text in enumerate(texts):
        ids = fmt.format(text).input_ids + forced
        if len(ids) + max_new_tokens > lm.context_length:
            raise LexprobeError(
                f"prompt {i + 1} plus {max_new_tokens} new tokens exceeds the model's context of "
                f"{lm.context_length}: shorten it or lower --max-new-tokens"
            )
        inputs.append(ids)
    stop = set(lm.stop_token_ids)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=sorted(stop),
        pad_token_id=lm.pad_token_id,
    )
    order = sorted(range(len(texts)), key=lambda i: len(inputs[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    results: list[Completion | None] = [None] * len(texts)
    for chunk in progress(chunks, desc=desc, unit="batch"):
        ids, mask = left_pad([inputs[i] for i in chunk], lm.pad_token_id)
        out = lm.model.generate(
            input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), generation_config=config
        )
        done = []
        for row, i in enumerate(chunk):
            new = out[row, ids.shape[1] :].tolist()
            cut = next((k for k, t in enumerate(new) if t in stop), None)
            kept = forced + (new if cut is None else new[:cut])
            text = lm.tokenizer.decode(kept, skip_special_tokens=True)
            results[i] = Completion(text, kept, cut is not None)
            done.append(results[i])
        if on_batch is not None:
            on_batch(chunk, done)
    return results
