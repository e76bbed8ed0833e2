"""Batched greedy generation with a KV cache and left padding.

The loop is transformers' greedy search with two changes: the prefix every prompt shares (template
head and system prompt) runs once and its KV cache is expanded over each batch (`SharedPrefix`), and
rows that have stopped leave the batch (their KV cache rows are dropped with
`Cache.batch_select_indices`), so a batch of short refusals and long answers costs what its long
answers cost, not batch size x longest answer. Token-for-token equal to
`model.generate(do_sample=False)` (tests/unit/test_generate.py).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lexprobe.probes.steering import gate_control, gate_rows
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.progress import progress
from lexprobe.toolkit.models.chat import ChatFormat
from lexprobe.toolkit.models.prefix import SharedPrefix


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
    ids: list[str] | None = None,
) -> list[Completion]:
    """Greedy completions of `texts`, in order. `forced_prefix` token ids are appended to every prompt
    (and included in the returned ids). `on_batch(indices, completions)` is called as batches finish."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise InputError(f"--max-new-tokens must be at least 1, got {max_new_tokens}")
    forced = list(forced_prefix or [])
    inputs = []
    for i, text in enumerate(texts):
        row = fmt.format(text).input_ids + forced
        if len(row) + max_new_tokens > lm.context_length:
            name = f"prompt id {ids[i]}" if ids is not None else f"prompt {i + 1}"
            raise InputError(
                f"{name} plus {max_new_tokens} new tokens exceeds the model's context of "
                f"{lm.context_length}: shorten it or lower --max-new-tokens"
            )
        inputs.append(row)
    stop = set(lm.stop_token_ids)
    head = fmt.prefix_ids
    # transformers counts a sliding window in cache slots: with the prefix shared before each row's left
    # padding, a row of a padded batch would see its prefix from too far; rows that fit in the window
    # never reach the edge
    window, _ = lm.attention_window
    fits = window is None or max(map(len, inputs), default=0) + max_new_tokens <= window
    shared = SharedPrefix(lm, head if fits and all(r[: len(head)] == head for r in inputs) else [])
    order = sorted(range(len(texts)), key=lambda i: len(inputs[i]))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    results: list[Completion | None] = [None] * len(texts)
    with progress(None, desc=desc, total=len(texts), unit="completion") as bar:
        for chunk in chunks:
            done = []
            prompts = [inputs[i][: len(inputs[i]) - len(forced)] for i in chunk]
            with gate_rows(lm, prompts):  # a gated steering reads each formatted prompt, forced tokens aside
                made = greedy([inputs[i] for i in chunk], lm, max_new_tokens, stop, shared)
            for i, (new, stopped) in zip(chunk, made):
                kept = forced + new
                results[i] = Completion(lm.tokenizer.decode(kept, skip_special_tokens=True), kept, stopped)
                done.append(results[i])
            if on_batch is not None:
                on_batch(chunk, done)
            bar.update(len(chunk))
    return results


@torch.no_grad()
def prefill(rows: list[list[int]], lm, shared: SharedPrefix | None = None):
    """One pass over token rows, left-padded, each starting with `shared.ids` when `shared` is given (that
    prefix comes from its cache): (the cache, next-token logits [batch, vocab], the attention mask
    [batch, prefix + seq], each row's last position [batch])."""
    p = len(shared) if shared is not None else 0
    ids, mask = left_pad([r[p:] for r in rows], lm.pad_token_id)
    ids, mask = ids.to(lm.device), mask.to(lm.device)
    positions = p + (mask.cumsum(dim=1) - 1).clamp_min(0)  # [batch, seq]
    cache = shared.cache(len(rows)) if p else None
    mask = torch.cat([mask.new_ones((len(rows), p)), mask], dim=1)  # the prefix, then the left-padded rest
    with _contiguous_head_input(lm.model):
        out = lm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    return out.cache, out.logits[:, -1], mask, positions[:, -1]


@torch.no_grad()
def greedy(
    rows: list[list[int]], lm, max_new_tokens: int, stop: set[int], shared: SharedPrefix | None = None
) -> list[tuple[list[int], bool]]:
    """Greedy continuations of token rows: (new ids without the stop token, whether a stop token came).
    Every row starts with `shared.ids` when `shared` is given; that prefix is not run again."""
    cache, logits, mask, last = prefill(rows, lm, shared)
    live = list(range(len(rows)))  # original row of each batch row still generating
    new: list[list[int]] = [[] for _ in rows]
    stopped = [False] * len(rows)
    for _step in range(max_new_tokens):
        tokens = logits.argmax(dim=-1)  # [live]
        keep = []
        for b, row in enumerate(live):
            tok = int(tokens[b])
            if tok in stop:
                stopped[row] = True
                continue
            new[row].append(tok)
            if len(new[row]) < max_new_tokens:
                keep.append(b)
        if not keep:
            break
        if len(keep) < len(live):
            index = torch.tensor(keep, device=lm.device)
            cache.batch_select_indices(index)
            if (control := gate_control(lm)) is not None:
                control.select(index)
            tokens, mask, last = tokens[index], mask[index], last[index]
            live = [live[b] for b in keep]
        mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=1)
        last = last + 1
        out = lm.model(
            input_ids=tokens[:, None],
            attention_mask=mask,
            position_ids=last[:, None],
            cache=cache,
            use_cache=True,
        )
        cache, logits = out.cache, out.logits[:, -1]
    return [(new[r], stopped[r]) for r in range(len(rows))]


@contextmanager
def _contiguous_head_input(model):
    """`logits_to_keep=1` hands the output layer a strided slice [batch, 1, d] of the hidden states. For
    such an input and weights that need no gradient, torch 2.13 on CPU expands the weight to [batch, d,
    vocab] and copies it before a bmm: 38.6 s instead of 0.045 s for 32 rows of the default model's
    head in bf16, 0.86 s instead of 0.17 s in float32 (measured on this project's 2-core EPYC). A
    contiguous input takes the plain matmul."""
    head = model.get_output_embeddings()
    if head is None:
        yield
        return
    handle = head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))
    try:
        yield
    finally:
        handle.remove()
