"""What every attribution method shares: the registry, its settings, and one prompt's refusal margin as
a function of (a) the user-token embeddings and (b) a keep/drop mask over the user's words.

Both functions leave the chat template and the system prompt untouched: the shared prefix comes from
the scorer's KV cache, the template tail and the readout tree keep their real embeddings, and only the
user's tokens (or words) move. That is also where the speed comes from: a batch of interpolation steps
is a batch of suffixes whose user-token embeddings are the path points; logits are computed only at
the readout positions (`probes/margin.py`). Several prompts of one run share batches
(`score_texts`, `gradients_together`), so small requests of many prompts fill whole passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lexprobe.probes.steering import gate_rows
from lexprobe.toolkit.attribution.words import Word, remove_words, segment, word_weights
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.registry import Registry
from lexprobe.toolkit.scoring.scorer import Scorer

ATTRIBUTION_METHODS = Registry("attribution method")
# Methods whose words come out in bf16 as in float32: one gradient's size, or margins of perturbed texts.
# On the default model (XSTest homonyms, bf16 against float32): the top word agreed on 24 of 25 prompts
# for saliency and 25 of 25 for occlusion, and on 8 of 8, 7 of 8 and 7 of 8 for kernel SHAP, LIME and
# Shapley, the median Spearman correlation of word scores 0.99-1.00 (docs/models.md). Integrated
# gradients and GradientSHAP integrate along a path and reach their completeness tolerance less often in
# bf16; input x gradient kept its top word on 6 of 8; a method registered by a user is not known.
BF16_METHODS = frozenset({"saliency", "occlusion", "kernel_shap", "lime", "shapley"})


def needs_float32(methods) -> bool:
    """Whether `--dtype auto` runs these attribution methods in float32 (any of them outside BF16_METHODS)."""
    return any(m not in BF16_METHODS for m in methods)


TARGETS = ("decision", "smooth", "sampled")
BASELINES = ("pad", "zero")
IG_RULES = ("adaptive", "trapezoid", "gausslegendre")


@dataclass(kw_only=True)
class AttributionSettings(Options):
    """Knobs of every method; each method reads the ones it needs (CLI flags map onto these)."""

    # which margin: smooth (the decision margin with its steps softened; IG converged on 36 of 36 refused
    # XSTest prompts against 28 of 36 on the decision margin, benchmarks/ig_targets.py) | decision | sampled
    target: str = "smooth"
    n_steps: int = 16  # integrated gradients: uniform steps of the first try
    max_steps: int = 256  # ... refined up to this many steps while the completeness error exceeds:
    tolerance: float = 0.05  # ... the relative completeness error to reach
    rule: str = "adaptive"  # ... adaptive (bisect the worst intervals) | trapezoid (uniform) | gausslegendre
    baseline: str = "pad"  # user-token embeddings at the IG / input x gradient reference: pad | zero
    n_samples: int | None = None  # shapley: permutations; kernel_shap/lime: coalitions; gradient_shap: draws
    replacement: str | None = None  # perturbations: drop a word (None) or put this text in its place
    group_phrases: bool = False  # "blow up" as one feature
    batch_size: int = 16  # rows per forward pass
    seed: int = 0

    def __post_init__(self):
        if self.target not in TARGETS:
            raise InputError(f"unknown attribution target '{self.target}': use {', '.join(TARGETS)}")
        if self.baseline not in BASELINES:
            raise InputError(f"unknown --baseline '{self.baseline}': use {' or '.join(BASELINES)}")
        if self.rule not in IG_RULES:
            raise InputError(f"unknown --ig-rule '{self.rule}': use {', '.join(IG_RULES)}")
        if self.n_steps < 1 or self.max_steps < self.n_steps:
            raise InputError(
                f"--steps must be at least 1 and at most --max-steps, got {self.n_steps} and {self.max_steps}"
            )
        if self.n_samples is not None and self.n_samples < 1:
            raise InputError(f"--samples must be at least 1, got {self.n_samples}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, got {self.batch_size}")


@dataclass
class MethodOutput:
    word_scores: np.ndarray  # [n_words]; > 0 pushes toward refusal
    token_scores: np.ndarray | None = None  # [n_user_tokens] for gradient methods
    info: dict = field(default_factory=dict)  # completeness error, steps, evaluations, ...


class PromptTarget:
    """One user text under a scorer: its words, and its margin as a function of embeddings or word masks."""

    def __init__(self, scorer: Scorer, text: str, settings: AttributionSettings, name: str = "prompt"):
        self.scorer, self.text, self.settings = scorer, text, settings
        self.lm = scorer.lm
        self.prompt = scorer.encode(text, name)
        self.words: list[Word] = segment(text, settings.group_phrases)
        if not self.words:
            raise InputError(f"{name} has no words to attribute: give some text")
        self.weights = word_weights(self.prompt.user_token_spans(), self.words, text)  # [n_user, n_words]
        self.n_user = len(self.prompt.user_token_indices)
        first = scorer.prefix_len
        if self.prompt.user_token_indices != list(range(first, first + self.n_user)):
            raise RuntimeError(
                "user tokens must directly follow the shared prefix"
            )  # ChatFormat guarantees it
        self.suffix = scorer.suffix_ids(self.prompt)  # user tokens, template tail
        self._batch = scorer.batch([self.suffix])  # one row: no padding
        with torch.no_grad(), gate_rows(self.lm, self._batch.rows):  # steered as this prompt's passes are
            embeds = self.lm.embed(self._batch.ids)[0]  # [q, d_model]: user tokens, template tail, tree
        self.user_embeds = embeds[: self.n_user]  # [n_user, d_model]
        self._rest = embeds[self.n_user :]  # [q - n_user, d_model]
        self._memo: dict[str, dict[str, float]] = {}  # text -> {decision, sampled, smooth}
        self.temperature = scorer.readout.smooth_temperature
        if settings.target == "smooth" and self.temperature is None:
            raise InputError(
                "this readout has no smooth-margin temperature (a readout file made without one): use the "
                "decision target (--target decision), or leave out --readout so lexprobe takes one that has it"
            )
        self.rows_forward = 0  # rows of model input run (a measure of cost)
        self.rows_backward = 0

    # ------------------------------------------------------------------ embeddings -> margin
    def baseline_embeds(self, kind: str | None = None) -> torch.Tensor:
        """[n_user, d_model] the reference for the user tokens: the pad token's embedding, or zeros."""
        kind = kind or self.settings.baseline
        if kind == "zero":
            return torch.zeros_like(self.user_embeds)
        pad = torch.tensor([self.lm.pad_token_id], device=self.lm.device)
        with torch.no_grad(), gate_rows(self.lm, self._batch.rows):
            return self.lm.embed(pad).expand(self.n_user, -1).clone()

    def margin_of_embeds(self, user: torch.Tensor) -> torch.Tensor:
        """[N, n_user, d_model] user-token embeddings -> [N] margins (float64); differentiable."""
        n = user.shape[0]
        batch = self._batch.repeat(n)
        embeds = torch.cat([user.to(self._rest.dtype), self._rest.expand(n, -1, -1)], dim=1)
        margins, _ = self.scorer.margins_for(batch, inputs_embeds=embeds, temperature=self.temperature)
        self.rows_forward += n
        return getattr(margins, self.settings.target)

    def gradients(self, points: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Margins [N] and their gradients [N, n_user, d_model] at `points` [N, n_user, d_model],
        in chunks of `batch_size` rows."""
        return gradients_together([(self, points)])[0]

    # ------------------------------------------------------------------ word masks -> margin
    def margins_of_texts(self, texts: list[str], which: str | None = None) -> np.ndarray:
        """[N] margins of user texts under the same template and system prompt (memoised, batched)."""
        score_texts([(self, texts)])
        which = which or self.settings.target
        return np.array([self._memo[t][which] for t in texts])

    def masked_text(self, keep: np.ndarray) -> str:
        return remove_words(self.text, self.words, keep, self.settings.replacement)

    def margins_of_masks(self, keep: np.ndarray) -> np.ndarray:
        """[N, n_words] bool (True = keep the word) -> [N] margins of the texts without the dropped words."""
        return self.margins_of_texts([self.masked_text(row) for row in np.asarray(keep, dtype=bool)])

    @property
    def margin(self) -> float:
        """The attributed margin of the unchanged prompt."""
        return float(self.margins_of_texts([self.text])[0])

    def margins(self) -> dict[str, float]:
        """Every margin of the unchanged prompt: decision, sampled (and smooth, when known)."""
        self.margins_of_texts([self.text])
        return dict(self._memo[self.text])


def score_texts(requests: list[tuple[PromptTarget, list[str]]]) -> None:
    """Score the texts each target asks for and has not scored yet, every target's in the same batches
    (shortest first, `batch_size` rows a pass), into the targets' memos. The targets share one scorer:
    prompts of one run, so a run's perturbed texts fill whole batches instead of a few rows each."""
    todo = [
        (target, text)
        for target, texts in requests
        for text in dict.fromkeys(texts)
        if text not in target._memo
    ]
    if not todo:
        return
    scorer, settings, temperature = todo[0][0].scorer, todo[0][0].settings, todo[0][0].temperature
    suffixes = [scorer.suffix_ids(scorer.fmt.format(text)) for _, text in todo]
    order = sorted(range(len(todo)), key=lambda i: len(suffixes[i]))  # similar lengths pad less
    for start in range(0, len(order), settings.batch_size):
        chunk = order[start : start + settings.batch_size]
        with torch.no_grad():
            margins, _ = scorer.margins_for(
                scorer.batch([suffixes[i] for i in chunk]), temperature=temperature
            )
        values = {name: v.cpu().numpy() for name, v in margins._asdict().items() if v is not None}
        for k, i in enumerate(chunk):
            target, text = todo[i]
            target._memo[text] = {name: float(v[k]) for name, v in values.items()}
            target.rows_forward += 1


def gradients_together(
    requests: list[tuple[PromptTarget, torch.Tensor]],
) -> list[tuple[np.ndarray, torch.Tensor]]:
    """For each (target, points [k, n_user, d_model]): the margins [k] and their gradients [k, n_user,
    d_model] there. Rows of every target share batches of `batch_size` (left-padded suffixes, as the
    scorer pads: a row sees what it would see alone); each row's user-token embeddings are its point."""
    rows = sorted(
        ((i, j) for i, (_, points) in enumerate(requests) for j in range(len(points))),
        key=lambda ij: len(requests[ij[0]][0].suffix),
    )  # similar lengths pad less
    values = [np.zeros(len(points)) for _, points in requests]
    grads = [torch.zeros_like(points) for _, points in requests]
    if not rows:
        return list(zip(values, grads))
    first = requests[0][0]
    scorer, lm = first.scorer, first.lm
    for start in range(0, len(rows), first.settings.batch_size):
        chunk = rows[start : start + first.settings.batch_size]
        targets = [requests[i][0] for i, _ in chunk]
        batch = scorer.batch([t.suffix for t in targets])
        with torch.no_grad(), gate_rows(lm, batch.rows):
            embeds = lm.embed(batch.ids)  # [rows, q, d_model]
        width = max(len(t.suffix) for t in targets)
        xs = [requests[i][1][j].detach().clone().requires_grad_(True) for i, j in chunk]
        stacked = []
        for r, (t, x) in enumerate(zip(targets, xs)):
            at = width - len(t.suffix)  # the row's first user token
            stacked.append(torch.cat([embeds[r, :at], x.to(embeds.dtype), embeds[r, at + t.n_user :]]))
        margins, _ = scorer.margins_for(
            batch, inputs_embeds=torch.stack(stacked), temperature=first.temperature
        )
        out = getattr(margins, first.settings.target)
        row_grads = torch.autograd.grad(out.sum(), xs)
        out = out.detach()
        for k, ((i, j), t) in enumerate(zip(chunk, targets)):
            values[i][j] = float(out[k])
            grads[i][j] = row_grads[k]
            t.rows_forward += 1
            t.rows_backward += 1
    return list(zip(values, grads))


def _seeded(settings: AttributionSettings, fn, *args):
    """fn(*args) with torch's and numpy's global generators seeded (captum draws from both), restored after."""
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            np.random.seed(settings.seed)
            return fn(*args)
    finally:
        np.random.set_state(state)


def attribute(target: PromptTarget, method: str) -> MethodOutput:
    """Run one registered method on one prompt, seeded so repeated runs agree."""
    return _checked(
        _seeded(target.settings, ATTRIBUTION_METHODS.get(method), target, target.settings), target, method
    )


def attribute_together(targets: list[PromptTarget], method: str) -> list[MethodOutput]:
    """Run one method on several prompts: side by side where the method can (a `together` attribute of
    the registered function, taking the targets and settings), else one prompt after another."""
    fn = ATTRIBUTION_METHODS.get(method)
    together = getattr(fn, "together", None)
    if together is None or len(targets) == 1:
        return [attribute(t, method) for t in targets]
    outs = _seeded(targets[0].settings, together, targets, targets[0].settings)
    return [_checked(out, t, method) for out, t in zip(outs, targets)]


def _checked(out, target: PromptTarget, method: str) -> MethodOutput:
    scores = getattr(out, "word_scores", None)
    if scores is None or np.shape(scores) != (len(target.words),):
        got = f"word_scores of shape {np.shape(scores)}" if scores is not None else repr(out)[:60]
        raise InputError(
            f"attribution method '{method}' returned {got}: it must return a MethodOutput with one score "
            f"per word ({len(target.words)} here)"
        )
    return out
