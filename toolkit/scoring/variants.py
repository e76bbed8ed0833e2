"""Refusal margins and in-context fluency of many prompt variants, one forward pass per text, cached.

Minimal-pair studies score an original and many rewrites of it. One batched pass (the `Scorer`'s:
shared system-prompt KV, left-padded suffixes, the readout's token tree) gives both numbers a study
needs for each text: the refusal margins, and the log-probability of the user's tokens in the chat
context (how natural the model finds the rewrite), which the substitution engine ranks candidates by.
Texts are cached, so the candidates scored for ranking are not scored again for the study.
"""

from __future__ import annotations

import numpy as np
import torch

from lexprobe.probes.hooks import output_tensor
from lexprobe.probes.margin import MarginProbe
from lexprobe.probes.steering import ungated
from lexprobe.toolkit.io.progress import progress
from lexprobe.toolkit.models.chat import USER
from lexprobe.toolkit.scoring.scorer import Scorer


class VariantScorer:
    def __init__(self, scorer: Scorer):
        self.scorer = scorer
        self.lm = scorer.lm
        # text -> (margin, sampled, log P(text), harmfulness logit or NaN without the scorer's probe)
        self.cache: dict[str, tuple[float, float, float, float]] = {}
        self._first: torch.Tensor | None = None  # [vocab] log P(first user token | template head)

    def score(self, texts: list[str], desc: str = "scoring variants") -> None:
        """Score the texts not yet in the cache."""
        todo = sorted({t for t in texts if t not in self.cache})
        if not todo:
            return
        prompts = [self.scorer.encode(t, f"variant '{t[:40]}'") for t in todo]
        suffixes = [self.scorer.suffix_ids(p) for p in prompts]
        order = sorted(range(len(todo)), key=lambda i: len(suffixes[i]))
        size = self.scorer.batch_size
        for chunk in progress(
            [order[i : i + size] for i in range(0, len(order), size)], desc=desc, unit="batch"
        ):
            margin, sampled, logp, harm = self._batch(
                [prompts[i] for i in chunk], [suffixes[i] for i in chunk]
            )
            for k, i in enumerate(chunk):
                self.cache[todo[i]] = (float(margin[k]), float(sampled[k]), float(logp[k]), float(harm[k]))

    def margins(self, texts: list[str]) -> np.ndarray:
        self.score(texts)
        return np.array([self.cache[t][0] for t in texts])

    def margins_sampled(self, texts: list[str]) -> np.ndarray:
        self.score(texts)
        return np.array([self.cache[t][1] for t in texts])

    def harmfulness(self, texts: list[str]) -> np.ndarray | None:
        """The harmfulness probe's logit of each text (None where the scorer has no probe)."""
        if self.scorer.harmfulness is None:
            return None
        self.score(texts)
        return np.array([self.cache[t][3] for t in texts])

    def fluency(self, texts: list[str]) -> np.ndarray:
        """log P(user text | system prompt and template head), summed over the user's tokens."""
        self.score(texts, desc="scoring candidates")
        return np.array([self.cache[t][2] for t in texts])

    # ----------------------------------------------------------------------------- internals
    @torch.no_grad()
    def _first_token_logprobs(self) -> torch.Tensor | None:
        prefix = self.scorer.fmt.prefix_ids
        if not prefix:
            return None
        if self._first is None:
            ids = torch.tensor([prefix], device=self.lm.device)
            with ungated(self.lm):  # the template head alone: no prompt to gate on
                states = self.lm.base(input_ids=ids).last_hidden_state[0, -1]  # final-normed [d_model]
            self._first = self.lm.logits(states).log_softmax(-1)
        return self._first

    @torch.no_grad()
    def _batch(self, prompts, suffixes):
        batch = self.scorer.batch(suffixes)
        probe = MarginProbe(self.lm, self.scorer.readout)
        captured: dict[str, torch.Tensor] = {}

        def keep(_module, _inputs, output):
            captured["states"] = output_tensor(output)  # [batch, q, d_model]

        read, pairs = self.scorer.harmfulness_reader()
        self.scorer.forward(batch, hook_pairs=[*probe.hook_pairs(), (self.lm.final_norm, keep), *pairs])
        decision, sampled, _ = probe.margins()
        harm = read[0] if read else np.full(len(suffixes), np.nan)
        states = captured["states"]
        width = max(len(s) for s in suffixes)
        rows, cols, targets, owner, first = [], [], [], [], []
        for r, (prompt, suffix) in enumerate(zip(prompts, suffixes)):
            kinds = prompt.token_kinds[self.scorer.prefix_len :]
            offset = width - len(suffix)
            for u, kind in enumerate(kinds):
                if kind != USER:
                    continue
                if u == 0:
                    first.append((r, suffix[0]))
                    continue
                rows.append(r)
                cols.append(offset + u - 1)  # the state before the token predicts it
                targets.append(suffix[u])
                owner.append(r)
        logp = torch.zeros(len(suffixes), dtype=torch.float64)
        if rows:
            h = states[torch.tensor(rows), torch.tensor(cols)]  # [n_tokens, d_model]
            logits = self.lm.logits(h)  # float32, as the model computes them
            lp = logits.log_softmax(-1).gather(1, torch.tensor(targets, device=logits.device)[:, None])
            logp.index_add_(0, torch.tensor(owner), lp[:, 0].double().cpu())
        head = self._first_token_logprobs()
        if head is not None:
            for r, tok in first:
                logp[r] += float(head[tok])
        return decision.cpu().numpy(), sampled.cpu().numpy(), logp.numpy(), harm
