"""What the chat model itself says about words: input-embedding neighbours and sentence log-probabilities.

The substitution engine's automatic strategy proposes the nearest whole-word tokens of a lemma in the
model's input embedding (cosine), and ranks candidate rewrites by how fluent the model finds them.
"""

from __future__ import annotations

import re

import numpy as np
import torch

from lexprobe.probes.steering import ungated
from lexprobe.toolkit.io.progress import progress

WORD_TOKEN = re.compile(r" [a-z]{3,}")  # a whole lowercase word with its leading space


class EmbeddingNeighbours:
    """Nearest whole-word tokens of a word in a model's input embedding matrix."""

    def __init__(self, lm):
        tok = lm.tokenizer
        ids, words = [], []
        for piece, i in tok.get_vocab().items():
            text = tok.convert_tokens_to_string([piece])
            if WORD_TOKEN.fullmatch(text):
                ids.append(i)
                words.append(text[1:])
        weight = lm.embed.weight.detach().float().cpu()  # [vocab, d_model]
        self.tokenizer, self.weight = tok, weight
        self.words = words
        self.matrix = torch.nn.functional.normalize(weight[ids], dim=1)  # [n_words, d_model]

    def __call__(self, word: str, k: int = 40) -> list[str]:
        """The k nearest vocabulary words of ` word` (its sub-token embeddings averaged), nearest first."""
        ids = self.tokenizer(" " + word, add_special_tokens=False).input_ids
        if not ids or not len(self.words):
            return []
        query = torch.nn.functional.normalize(self.weight[ids].mean(0), dim=0)
        sims = self.matrix @ query
        top = sims.topk(min(k + 1, len(self.words))).indices.tolist()
        return [self.words[i] for i in top if self.words[i] != word][:k]


@torch.no_grad()
def sentence_logprob(lm, texts: list[str], batch_size: int = 16, desc: str = "fluency") -> np.ndarray:
    """[n] log P(text) under the model as plain text (no chat template), summed over its tokens.

    The first token is conditioned on the tokenizer's BOS token where it has one, else not scored.
    Rows are right-padded; padding is masked out of attention and of the sum.
    """
    tok = lm.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    encoded = [bos + tok(t, add_special_tokens=False).input_ids for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    out = np.zeros(len(texts))
    chunks = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for chunk in progress(chunks, desc=desc, unit="batch"):
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), lm.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        ids, mask = ids.to(lm.device), mask.to(lm.device)
        with ungated(lm):  # plain text, not a chat prompt: nothing to gate on
            logits = lm.model(input_ids=ids, attention_mask=mask).logits.float()  # [batch, width, vocab]
        logp = logits[:, :-1].log_softmax(-1).gather(2, ids[:, 1:, None])[..., 0]  # [batch, width - 1]
        out[chunk] = (logp * mask[:, 1:]).sum(1).cpu().numpy()
    return out
