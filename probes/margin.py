"""The refusal margin at the first assistant position, read out by forward hooks.

A `RefusalReadout` is a small trie of response openings learned from the model's own calibration
responses (`probes/readout.py`). Each *expanded* node (a token prefix; the root is the empty prefix)
lists the next tokens seen after it, each with r = P(the response is a refusal | it starts this way);
tokens never seen after the node get the node's `other` rate (0 at the root: compliance is the open
class, refusals open with a few stereotyped tokens). For Qwen the root is ambiguous at "As" ("As an
AI language model, I cannot..." vs "...I don't have opinions, but..."), so that path is expanded.

The expanded paths are appended to every input as a token *tree* (each appended token attends to the
prompt and its own ancestors, at the position it would have in a real response), so one forward pass
yields every next-token distribution the readout needs. Logits are computed only there.

Three margins come out (`MarginReader`):

    margin         = log P(best refusal opening) - log P(best compliance opening), taken where greedy
                     decoding decides; > 0 exactly when greedy decoding follows a refusal opening
    margin_sampled = log P(refuse) - log P(comply) when sampling at temperature 1:
                     P(refuse) = sum over openings l of P(l) r(l)
    margin_smooth  = the decision margin with its hard steps (max, argmax) softened at a temperature T
                     chosen on calibration prompts: a smooth stand-in for `margin` that integrated
                     gradients can integrate; greedy decoding's sign as T -> 0

and p_refuse = sigmoid(margin). On XSTest with the default model the decision margin separated refused
from answered prompts far better than the sampled one (docs/margin.md, "Margin validity"), because greedy
decoding takes the single most likely token while compliance spreads its mass over many openings.
Logits and log-probabilities are computed in float32 and float64 whatever the model's dtype.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from typing import NamedTuple

import torch

from lexprobe.probes.hooks import output_tensor
from lexprobe.toolkit.errors import NonFiniteError
from lexprobe.toolkit.models.devices import dtype_name

Path_ = tuple[int, ...]


@dataclass
class Node:
    children: dict[int, float]  # next token -> P(refusal | prefix + token)
    other: float  # P(refusal) for next tokens not in `children`


@dataclass
class RefusalReadout:
    nodes: dict[Path_, Node]  # expanded prefixes; () is the root and is always present
    details: dict = field(default_factory=dict)  # provenance: data, counts, settings

    @property
    def smooth_temperature(self) -> float | None:
        """The smooth margin's temperature, chosen on calibration prompts (`probes.readout`), if known."""
        value = self.details.get("smooth_temperature")
        return None if value is None else float(value)

    def __post_init__(self):
        if () not in self.nodes:
            raise ValueError("a readout needs a root node")
        for path in self.nodes:
            if path and (path[:-1] not in self.nodes or path[-1] not in self.nodes[path[:-1]].children):
                raise ValueError(f"expanded path {path} has no expanded parent listing it")
        outcomes = {
            r > 0.5
            for path, n in self.nodes.items()
            for t, r in n.children.items()
            if path + (t,) not in self.nodes
        }
        outcomes |= {n.other > 0.5 for n in self.nodes.values()}
        if outcomes != {True, False}:
            raise ValueError(
                "a readout needs both a refusal and a compliance opening (rates above and below 0.5)"
            )

    # ------------------------------------------------------------------ the appended token tree
    @cached_property
    def tree(self) -> list[Path_]:
        """Expanded non-root paths, breadth first: the tokens appended to every input, in order."""
        return sorted((p for p in self.nodes if p), key=lambda p: (len(p), p))

    @property
    def extra_tokens(self) -> list[int]:
        return [p[-1] for p in self.tree]

    def tree_parents(self) -> list[int]:
        """For each appended token, the index of its parent in the tree, or -1 for the root."""
        index = {p: i for i, p in enumerate(self.tree)}
        return [index.get(p[:-1], -1) for p in self.tree]

    def tree_ancestors(self) -> torch.Tensor:
        """[T, T] bool: appended token i may attend to appended token j (j is i or an ancestor of i)."""
        t = len(self.tree)
        allowed = torch.eye(t, dtype=torch.bool)
        parents = self.tree_parents()
        for i in range(t):
            j = parents[i]
            while j >= 0:
                allowed[i, j] = True
                j = parents[j]
        return allowed

    def tree_depths(self) -> list[int]:
        return [len(p) - 1 for p in self.tree]  # 0 for a first response token

    # ------------------------------------------------------------------ (de)serialisation
    def sha256(self) -> str:
        """The readout's identity (resume checks, caches): its trie and smooth temperature, not its notes."""
        return self._digest(self._node_list())

    def _node_list(self) -> list[dict]:
        return [
            {"path": list(p), "children": {str(k): v for k, v in n.children.items()}, "other": n.other}
            for p, n in sorted(self.nodes.items(), key=lambda kv: (len(kv[0]), kv[0]))
        ]

    def to_json(self) -> str:
        nodes = self._node_list()
        return json.dumps({"nodes": nodes, "details": self.details, "sha256": self._digest(nodes)}, indent=1)

    def _digest(self, nodes: list[dict]) -> str:
        import hashlib

        key = {"nodes": nodes, "smooth_temperature": self.smooth_temperature}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()

    @classmethod
    def from_json(cls, text: str) -> RefusalReadout:
        """The readout `to_json` wrote; a ValueError where its numbers do not match its sha256 (edited or
        damaged; a file written before readouts had one is taken as it is)."""
        data = json.loads(text)
        nodes = {
            tuple(n["path"]): Node({int(k): float(v) for k, v in n["children"].items()}, float(n["other"]))
            for n in data["nodes"]
        }
        readout = cls(nodes, data.get("details", {}))
        if "sha256" in data and data["sha256"] != readout.sha256():
            raise ValueError("its numbers do not match its sha256 (edited or damaged)")
        return readout

    def describe(self, tokenizer) -> dict:
        """Human-readable: each expanded prefix with its refusal-leaning and compliance-leaning next tokens."""
        out = {}
        for path, node in sorted(self.nodes.items(), key=lambda kv: (len(kv[0]), kv[0])):
            key = tokenizer.decode(list(path)) if path else "<start>"
            ranked = sorted(node.children.items(), key=lambda kv: -kv[1])
            out[key] = {
                "refuse": [f"{tokenizer.decode([t])}:{r:.2f}" for t, r in ranked if r > 0.5],
                "comply": [f"{tokenizer.decode([t])}:{r:.2f}" for t, r in ranked if r <= 0.5][:12],
                "other": round(node.other, 3),
            }
        return out


BIG = 1e4  # internal stand-in for the +-infinite outcome of a leaf; never returned (see `margins`)


class Margins(NamedTuple):
    """The readings of one pass, each [batch] float64: `decision` (> 0 exactly where greedy decoding
    refuses), `sampled` (log-odds of refusing when sampling at temperature 1) and, when a temperature
    is given, `smooth` (the temperature-smoothed path margin, a smooth stand-in for `decision`)."""

    decision: torch.Tensor
    sampled: torch.Tensor
    smooth: torch.Tensor | None = None


class MarginReader:
    """Margins from the final hidden states at the read-out positions, for one model and readout.

    Three readings of the same trie (docs: the module docstring):
    - `decision`: greedy decoding picks the most likely next token at each expanded prefix. At a node,
      let a (b) be the best log-probability among next tokens that lead to refusal (compliance): leaves
      by r > 0.5, expanded children by the sign of their own margin. The node's margin is a - b, capped
      by the chosen child's margin when greedy continues into an expanded prefix; 0 on an exact tie.
      Where no next token leads to refusal (compliance), the margin is how far the best expanded child
      is from both becoming the greedy choice and turning (min(lead, child margin), best child). It
      steps (no gradient sees it) where the greedy choice switches between a leaf and a child whose
      margin is smaller, and where a child greedy does not take changes side.
    - `sampled`: log P(refuse) - log P(comply) when sampling at temperature 1, summing over all
      openings weighted by r.
    - `smooth` (temperature T): the decision margin's recursion with each hard step (max, argmax,
      the sign of a child's margin) softened at temperature T (`_node_smooth`). Smooth in the logits.
      As T -> 0 it has greedy decoding's sign and tends to a continuous version of the decision
      margin: the same value, except where a prefix greedy does not take is the nearest way to change
      the outcome, which the decision margin ignores (there it steps; the smooth margin does not).

    Every returned decision margin is finite and no larger in magnitude than the largest -log p of any
    token at any read-out position (a bound that follows from the log-probabilities; checked).

    How it is computed: at a node, every token the trie does not list has the same outcome (the
    node's `other` rate), so each reading needs of those tokens only their two largest log-probabilities
    and their log-sum-exp at temperatures 1 and T. `_Reduced` takes these from the whole vocabulary
    once per pass (a few passes over [batch, 1 + T, vocab]); the recursion then runs on the listed
    tokens alone. Sums over the vocabulary split exactly into listed and unlisted parts, so this is the
    full-vocabulary definition, not an approximation (tests/unit/test_margin_reader.py checks values and
    gradients against it).
    """

    def __init__(self, lm, readout: RefusalReadout):
        self.lm = lm
        self.readout = readout
        index = {p: i + 1 for i, p in enumerate(readout.tree)}  # state row of each expanded path; root = 0
        # Bottom-up plan: for each expanded node (deepest first), its state row, leaf children (id, r),
        # expanded children (id, row), and the `other` rate for unlisted tokens.
        self._plan = []
        for path in sorted(readout.nodes, key=len, reverse=True):
            node = readout.nodes[path]
            leaves = [(t, r) for t, r in node.children.items() if path + (t,) not in index]
            expanded = [(t, index[path + (t,)]) for t in node.children if path + (t,) in index]
            self._plan.append((index.get(path, 0), leaves, expanded, node.other))
        self._listed: dict[tuple, torch.Tensor] = {}  # (vocab, device) -> [1 + T, vocab] bool
        listed = {
            row: [t for t, _ in leaves] + [t for t, _ in expanded] for row, leaves, expanded, _ in self._plan
        }
        width = max(1, max(len(ids) for ids in listed.values()))
        # [1 + T, K]: each position's listed tokens (leaves, then children), padded with token 0
        self._ids = torch.tensor([listed[row] + [0] * (width - len(listed[row])) for row in sorted(listed)])

    def log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """[batch, 1 + T, d_model] -> [batch, 1 + T, vocab] next-token log-probabilities (float64), from
        float32 logits computed as the model computes them (`LoadedModel.logits`), whatever its dtype."""
        return torch.log_softmax(self.lm.logits(states).double(), dim=-1)

    def margins(self, states: torch.Tensor, temperature: float | None = None) -> Margins:
        """The readings of the final-normed states [batch, 1 + T, d_model] at the read-out positions.

        Without gradients, a bf16 or float16 model's logits are screened in its own dtype first
        (`_Reduced.screened`): the readings are those of its float32 logits, at a fraction of the cost."""
        if not states.requires_grad:
            red = _Reduced.screened(self.lm, states, self.listed_mask, self._ids, temperature)
            if red is not None:
                return self._readings(red, temperature)
        return self.read(self.lm.logits(states), temperature)

    def listed_mask(self, vocab: int, device) -> torch.Tensor:
        """[1 + T, vocab] bool: the tokens each read-out position's node lists (leaves and children)."""
        key = (vocab, str(device))
        if key not in self._listed:
            mask = torch.zeros((1 + len(self.readout.tree), vocab), dtype=torch.bool, device=device)
            for row, leaves, expanded, _ in self._plan:
                mask[row, [t for t, _ in leaves] + [t for t, _ in expanded]] = True
            self._listed[key] = mask
        return self._listed[key]

    def read(self, scores: torch.Tensor, temperature: float | None = None) -> Margins:
        """The readings of next-token log-probabilities, or logits (any shift per position gives the
        same readings), [batch, 1 + T, vocab] at the read-out positions."""
        mask = self.listed_mask(scores.shape[-1], scores.device)
        return self._readings(
            _Reduced.of_scores(scores, mask, self._ids.to(scores.device), temperature), temperature
        )

    def _readings(self, red: _Reduced, temperature: float | None) -> Margins:
        """The trie's recursion over one pass's reduced statistics."""
        device = red.listed.device
        decision: dict[int, torch.Tensor] = {}  # state row -> [batch]
        sampled: dict[int, torch.Tensor] = {}  # state row -> [batch, 2]: log P(refuse), log P(comply)
        smooth: dict[int, torch.Tensor] = {}  # state row -> [batch]
        for row, leaves, expanded, other in self._plan:
            node = red.node(row, leaves, expanded, other, decision)
            decision[row] = _node_decision(node, expanded, decision)
            rate = torch.tensor([other, 1 - other], dtype=torch.float64, device=device)
            terms = [(node.rest[:, None] + rate.log())[..., None]]  # [batch, 2, 1]: unlisted tokens
            if leaves:
                r = torch.tensor([r for _, r in leaves], dtype=torch.float64, device=device)
                terms.append(node.lp[:, None, : len(leaves)] + torch.stack([r.log(), (1 - r).log()]))
            for k, (_, child) in enumerate(expanded):
                terms.append((node.lp[:, len(leaves) + k, None] + sampled[child])[..., None])
            sampled[row] = torch.logsumexp(torch.cat(terms, dim=2), dim=2)
            if temperature is not None:
                smooth[row] = _node_smooth(node, expanded, smooth, temperature)
        result = Margins(
            decision[0],
            sampled[0][:, 0] - sampled[0][:, 1],
            None if temperature is None else smooth[0],
        )
        bound = red.bound()
        if not (
            torch.isfinite(result.decision).all()
            and (result.decision.detach().abs() <= bound + 2 * red.slack + 1e-6).all()
        ):
            raise RuntimeError(
                f"decision margin outside its bound: {result.decision.tolist()} vs {bound.tolist()}"
            )
        return result


class _Node(NamedTuple):
    """One node's next-token log-probabilities, reduced to what the readings use. Listed tokens come
    leaves first, then expanded children, in the plan's order; unlisted tokens all have the node's
    `other` outcome, so only their largest values and log-sum-exps matter."""

    lp: torch.Tensor  # [batch, k] log p of the listed tokens
    outcome: torch.Tensor  # [batch, k] +-BIG for leaves, the child's decision margin for children
    ids: torch.Tensor  # [k] the listed token ids
    top: torch.Tensor  # [batch, 2] the two largest log p among unlisted tokens (-inf where none)
    top_id: torch.Tensor  # [batch] the token id of the largest
    other_refuses: bool  # the outcome of every unlisted token
    rest: torch.Tensor  # [batch] log P(an unlisted token)
    rest_t: torch.Tensor | None  # [batch] log sum over unlisted tokens of exp(log p / T)


class _Reduced:
    """The whole-vocabulary statistics of one pass, per read-out position [batch, 1 + T]: over the tokens
    the position's node does not list, the two largest scores, the first token holding the largest, and
    log-sum-exps at temperatures 1 and T; and the smallest score overall (for the bound). float64.

    Computed a block of rows of one position at a time: temporaries of at most `BLOCK` elements stay
    below glibc's mmap threshold and reuse heap memory, where whole [batch, 1 + T, vocab] float64
    temporaries (150 MB at batch 16) were mapped and faulted in afresh on every pass, which made the
    readout as slow as the model's forward pass."""

    def __init__(self, listed: torch.Tensor, stats: list[torch.Tensor], temperature: float | None, slack=0.0):
        self.temperature = temperature
        self.listed = listed  # [batch, P, K] the listed tokens' scores, float64
        self.top, self.top_id, self.lse, self.lowest = stats[:4]
        self.lse_t = stats[4] if temperature is not None else None
        self.slack = slack  # how far a score may be from its float32 value (screened: `screened`)
        self.norms: dict[int, torch.Tensor] = {}  # row -> [batch] log-sum-exp over the whole vocabulary

    @classmethod
    def of_scores(
        cls, scores: torch.Tensor, listed_mask: torch.Tensor, ids: torch.Tensor, temperature: float | None
    ) -> _Reduced:
        """From whole scores [batch, P, vocab] (differentiable)."""
        batch, _, vocab = scores.shape
        # one gather and one split of the whole tensor: each indexing of it would add a whole
        # [batch, P, vocab] zero-filled gradient buffer to the backward pass
        listed = _widen(scores.gather(2, ids.expand(batch, -1, -1)))  # [batch, P, K]
        blocks = [pos.split(max(1, BLOCK // vocab)) for pos in scores.unbind(dim=1)]
        stats = [[_unlisted(b, listed_mask[p], temperature) for b in pos] for p, pos in enumerate(blocks)]
        return cls(listed, _joined(stats), temperature)

    @classmethod
    @torch.no_grad()
    def screened(cls, lm, states: torch.Tensor, mask_of, ids: torch.Tensor, temperature: float | None):
        """From the final states [batch, P, d_model] of a bf16 or float16 model, without its float32
        logits; None where that does not apply (`LoadedModel.unembed_screen`).

        The unembedding runs in the model's dtype (`raw`, within `bound` of the float32 product). Exact
        float32 logits are then computed for the listed tokens and for every token whose raw value is
        within 2 x bound of its row's (K + 2)-th largest, K the most tokens a position lists: no other
        token can be among the two largest unlisted ones, and the logits' last steps keep their order.
        So the two largest, the token holding the largest and the listed scores are the float32
        ones, and the decision margin with them; the log-sum-exps see the other tokens' raw values,
        whose rounding errors of either sign nearly cancel over the vocabulary. Statistics in float32."""
        screen = lm.unembed_screen(states)
        if screen is None:
            return None
        raw, bound = screen  # [batch, P, vocab]
        batch, positions, vocab = raw.shape
        ids = ids.to(raw.device)
        kth = raw.topk(min(ids.shape[1] + 2, vocab), dim=-1).values[..., -1:].float()
        low = kth - 2 * bound
        # compared in raw's dtype (no float32 copy of it), the threshold rounded down there: 2^-7 of it
        # exceeds the rounding (2^-8 for bf16, 2^-11 for float16), so no token above it is dropped
        near = (raw >= (low - low.abs() * 2**-7).to(raw.dtype)).flatten(0, 1).any(dim=0)
        near[ids.flatten()] = True
        union = near.nonzero().flatten()
        if len(union) > vocab // 4:  # rows too flat to screen
            return None
        exact = lm.logits(states, union).to(raw.device)  # [batch, P, len(union)]
        listed = exact.gather(2, torch.searchsorted(union, ids).expand(batch, -1, -1)).double()
        mask = mask_of(vocab, raw.device)
        stats = []
        for p in range(positions):
            listed_ids = mask[p].nonzero().flatten()
            # the two largest unlisted tokens are in the union, so are their float32 values (in vocabulary
            # order: the first token holding the largest is the one a pass over the whole row finds)
            near_unlisted = exact[:, p].masked_fill(mask[p][union], float("-inf"))  # [batch, len(union)]
            per_block = []
            for rows in torch.arange(batch, device=raw.device).split(max(1, BLOCK // vocab)):
                x = lm.finish_logits(raw[rows, p].float())
                x[:, union] = exact[rows, p]
                lowest = x.amin(dim=-1)
                x[:, listed_ids] = float("-inf")
                top = near_unlisted[rows].topk(2, dim=-1).values
                top_id = union[near_unlisted[rows].argmax(dim=-1)]
                got = [top, top_id, torch.logsumexp(x, dim=-1), lowest]
                if temperature is not None:
                    got.append(torch.logsumexp(x.div_(temperature), dim=-1))
                per_block.append([g if g.dtype == torch.long else g.double() for g in got])
            stats.append(per_block)
        # the architectures' last steps (scaling down, soft-capping) shrink differences: `bound` holds
        return cls(listed, _joined(stats), temperature, slack=bound)

    def bound(self) -> torch.Tensor:
        """[batch] the largest -log p of any token at any read-out position (after every `node`)."""
        norms = torch.stack([self.norms[row] for row in sorted(self.norms)], dim=1).detach()
        return (norms - self.lowest[:, sorted(self.norms)]).amax(dim=1)

    def node(self, row: int, leaves, expanded, other: float, decision: dict) -> _Node:
        ids = [t for t, _ in leaves] + [t for t, _ in expanded]
        ids_t = torch.tensor(ids, dtype=torch.long, device=self.listed.device)
        listed = self.listed[:, row, : len(ids)]  # [batch, k]
        norm = torch.logaddexp(self.lse[:, row], torch.logsumexp(listed, dim=-1)) if ids else self.lse[:, row]
        self.norms[row] = norm
        lp = listed - norm[:, None]
        outcome = [torch.full_like(norm, BIG if r > 0.5 else -BIG) for _, r in leaves]
        outcome += [decision[child] for _, child in expanded]
        outcome = torch.stack(outcome, dim=1) if outcome else lp
        rest_t = None
        if self.lse_t is not None:
            rest_t = self.lse_t[:, row] - norm / self.temperature
        return _Node(
            lp,
            outcome,
            ids_t,
            self.top[:, row] - norm[:, None],
            self.top_id[:, row],
            other > 0.5,
            self.lse[:, row] - norm,
            rest_t,
        )


BLOCK = 1 << 21  # elements of one temporary of the readout (16 MB in float64)


def _joined(stats: list[list[list[torch.Tensor]]]) -> list[torch.Tensor]:
    """Per position, per block of rows, a list of fields -> each field [batch, P, ...]."""
    return [
        torch.stack([torch.cat([b[k] for b in pos]) for pos in stats], dim=1) for k in range(len(stats[0][0]))
    ]


class _Widen(torch.autograd.Function):
    """x.double(), whose gradient comes back in x's dtype with values below its smallest normal number
    set to 0. The softmax weights of a vocabulary's unlikely tokens are that small, and CPU matmuls
    with subnormal inputs are very slow: the unembedding's backward pass took 4.7 s instead of 0.1 s
    for 16 rows of the default model. Those weights are 1e-31 of the largest and change nothing."""

    @staticmethod
    def forward(ctx, x):
        ctx.dtype = x.dtype
        return x.double()

    @staticmethod
    def backward(ctx, grad):
        return grad.masked_fill(grad.abs() < torch.finfo(ctx.dtype).tiny, 0).to(ctx.dtype)


def _widen(x: torch.Tensor) -> torch.Tensor:
    return _Widen.apply(x) if x.requires_grad else x.double()


def _unlisted(x: torch.Tensor, listed: torch.Tensor, temperature: float | None) -> list[torch.Tensor]:
    """Scores [rows, vocab] of one position, its node's listed tokens [vocab] bool -> [top two [rows, 2],
    first token holding the largest [rows], log-sum-exp [rows], smallest score of all [rows]] over the
    unlisted tokens, and their log-sum-exp at `temperature` when given."""
    x = _widen(x)
    unlisted = x.masked_fill(listed, float("-inf"))
    top = unlisted.topk(2, dim=-1).values if x.shape[-1] > 1 else unlisted.repeat(1, 2)
    out = [top, unlisted.detach().argmax(dim=-1), torch.logsumexp(unlisted, dim=-1), x.detach().amin(dim=-1)]
    if temperature is not None:
        out.append(torch.logsumexp(unlisted / temperature, dim=-1))
    return out


def _node_decision(node: _Node, expanded, decision) -> torch.Tensor:
    """One node's decision margin [batch] (see `MarginReader`): a - b, capped by the outcome of the
    greedy choice, with the best expanded child's distance to turning where one side has no token."""
    batch = node.lp.shape[0]
    first = node.top[:, 0]  # the best unlisted token stands for all of them in the maxima
    unlisted_out = torch.full_like(first, BIG if node.other_refuses else -BIG)
    lp = torch.cat([node.lp, first[:, None]], dim=1)  # [batch, k + 1]
    outcome = torch.cat([node.outcome, unlisted_out[:, None]], dim=1)
    ids = torch.cat([node.ids.expand(batch, -1), node.top_id[:, None]], dim=1)
    refuse = outcome > 0
    a = lp.masked_fill(~refuse, float("-inf")).amax(dim=-1)
    b = lp.masked_fill(refuse, float("-inf")).amax(dim=-1)
    best = lp.detach().amax(dim=-1, keepdim=True)  # greedy's choice: the first token holding the maximum
    pick = ids.masked_fill(lp.detach() < best, ids.max() + 1).argmin(dim=-1, keepdim=True)
    chosen = outcome.gather(1, pick).squeeze(1)
    gap = a - b  # +-inf where every next token leads one way
    zero = torch.zeros_like(gap)
    margin = torch.where(
        gap > 0, torch.minimum(gap, chosen), torch.where(gap < 0, torch.maximum(gap, chosen), zero)
    )
    if expanded:
        # No token leads to refusal (a = -inf): the node refuses only if a child both becomes the greedy
        # choice and turns to refusal, so its margin is the best child's min(lead, child margin); and
        # symmetrically where no token leads to compliance (b = -inf).
        top2 = torch.cat([node.lp, node.top], dim=1).topk(2, dim=-1).values
        lead, child_margin = [], []
        n_leaves = node.lp.shape[1] - len(expanded)
        for k, (_, child) in enumerate(expanded):
            own = node.lp[:, n_leaves + k]
            rival = torch.where(own >= top2[:, 0], top2[:, 1], top2[:, 0])
            lead.append(own - rival)
            child_margin.append(decision[child])
        lead, child_margin = torch.stack(lead), torch.stack(child_margin)  # [n_children, batch]
        up = torch.minimum(lead, child_margin).amax(dim=0)
        down = torch.maximum(-lead, child_margin).amin(dim=0)
        margin = torch.where(torch.isinf(a), up, torch.where(torch.isinf(b), down, margin))
    return margin.clamp(-BIG, BIG)  # +-BIG only inside the tree: a subtree that can only refuse/comply


def _node_smooth(node: _Node, expanded, smooth, temperature) -> torch.Tensor:
    """One node's smooth margin [batch]: the decision margin's recursion with every hard step softened
    at temperature T. An expanded child c counts toward refusal with weight sigmoid(m_c / T); the best
    refusal and compliance log-probabilities are T-logsumexps over weighted tokens (a_T, b_T); and the
    cap by the chosen child becomes an average over next tokens weighted by softmax(lp / T), a child's
    term being a soft min (m_c > 0) or soft max (m_c < 0) of the gap and its margin. A child on the
    other side still counts, with its log-probability moved by its margin (T log sigmoid(m_c / T) ->
    min(m_c, 0)), which is what removes the decision margin's steps. Unlisted tokens enter through
    their log-sum-exp at T (`_Node.rest_t`)."""
    t = temperature
    n_leaves = node.lp.shape[1] - len(expanded)
    refuse = node.outcome > 0  # [batch, k]: refusal leaves (children are overwritten below)
    # log weights toward refusal and toward compliance; -BIG / T (weight 0 to any precision that
    # matters), not -inf, so that a node where every token leads one way keeps finite gradients
    log_w = torch.zeros_like(node.lp).masked_fill(~refuse, -BIG / t)
    log_v = torch.zeros_like(node.lp).masked_fill(refuse, -BIG / t)
    children = [(n_leaves + k, smooth[child].clamp(-BIG, BIG)) for k, (_, child) in enumerate(expanded)]
    for col, m in children:
        log_w[:, col] = torch.nn.functional.logsigmoid(m / t)  # no underflow to log(0)
        log_v[:, col] = torch.nn.functional.logsigmoid(-m / t)
    rest_w, rest_v = (0.0, -BIG / t) if node.other_refuses else (-BIG / t, 0.0)
    scaled = node.lp / t  # [batch, k]
    a = t * torch.logsumexp(torch.cat([scaled + log_w, (node.rest_t + rest_w)[:, None]], dim=1), dim=-1)
    b = t * torch.logsumexp(torch.cat([scaled + log_v, (node.rest_t + rest_v)[:, None]], dim=1), dim=-1)
    gap = (a - b).clamp(-BIG, BIG)
    if not children:
        return gap
    total = torch.logsumexp(torch.cat([scaled, node.rest_t[:, None]], dim=1), dim=-1)  # [batch]
    p = torch.exp(scaled - total[:, None])  # [batch, k]: the soft greedy choice of each listed token
    rest = 1 - sum(p[:, col] for col, _ in children)
    margin = rest * gap
    for col, m in children:
        soft_min = -t * torch.logaddexp(-gap / t, -m / t)
        soft_max = t * torch.logaddexp(gap / t, m / t)
        w = torch.sigmoid(m / t)
        margin = margin + p[:, col] * (w * soft_min + (1 - w) * soft_max)
    return margin


class MarginProbe:
    """Forward hooks that capture the final-normed hidden states at the read-out positions.

    Use with `probes.hooks.hooks(probe.hook_pairs())` around one forward pass of the decoder stack on
    inputs ending in the readout's tree, then `probe.margins()`. With `layers=True` it also keeps every
    block's output there, for a per-layer logit lens through the final norm.
    """

    def __init__(self, lm, readout: RefusalReadout, layers: bool = False):
        self.lm = lm
        self.reader = MarginReader(lm, readout)
        self.width = 1 + len(readout.tree)
        self.layers = layers
        self._final: torch.Tensor | None = None
        self._layer_states: list[torch.Tensor] = []

    def hook_pairs(self):
        self._layer_states = []

        def on_final(_module, _inputs, output):
            self._final = output_tensor(output)[:, -self.width :, :]

        def on_block(_module, _inputs, output):
            self._layer_states.append(output_tensor(output)[:, -self.width :, :])

        pairs = [(self.lm.final_norm, on_final)]
        if self.layers:
            pairs += [(block, on_block) for block in self.lm.layers]
        return pairs

    @property
    def final_states(self) -> torch.Tensor:
        """[batch, 1 + T, d_model] final-normed states at the read-out positions of the recorded pass."""
        if self._final is None:
            raise RuntimeError("no forward pass was recorded: run the model inside hooks(probe.hook_pairs())")
        return self._final

    def margins(self, temperature: float | None = None) -> Margins:
        """The margins [batch] of the recorded pass (`smooth` too when a temperature is given); a
        NonFiniteError where a row's states overflowed (NaN or inf), never a margin read from them."""
        states = self.final_states
        finite = torch.isfinite(states.detach()).flatten(1).all(dim=1)
        if not bool(finite.all()):
            rows = [int(i) for i in (~finite).nonzero().flatten()]
            raise NonFiniteError(rows, self.lm.extra.get("steering_text"), dtype_name(states.dtype))
        return self.reader.margins(states, temperature)

    @torch.no_grad()
    def layer_margins(self) -> torch.Tensor:
        """[batch, n_layers]: the decision margin read through the final norm from each block's output."""
        norm = self.lm.final_norm
        return torch.stack([self.reader.margins(norm(h)).decision for h in self._layer_states], dim=1)
