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

Two margins come out (`MarginReader`):

    margin         = log P(best refusal opening) - log P(best compliance opening), taken where greedy
                     decoding decides; > 0 exactly when greedy decoding follows a refusal opening
    margin_sampled = log P(refuse) - log P(comply) when sampling at temperature 1:
                     P(refuse) = sum over openings l of P(l) r(l)

and p_refuse = sigmoid(margin). On XSTest with the default model (issue notes) the decision margin
separated refused from answered prompts far better than the sampled one, because greedy decoding
takes the single most likely token while compliance spreads its mass over many openings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property

import torch

from probes.hooks import output_tensor

Path_ = tuple[int, ...]


@dataclass
class Node:
    children: dict[int, float]  # next token -> P(refusal | prefix + token)
    other: float  # P(refusal) for next tokens not in `children`


@dataclass
class RefusalReadout:
    nodes: dict[Path_, Node]  # expanded prefixes; () is the root and is always present
    details: dict = field(default_factory=dict)  # provenance: data, counts, settings

    def __post_init__(self):
        if () not in self.nodes:
            raise ValueError("a readout needs a root node")
        for path in self.nodes:
            if path and (path[:-1] not in self.nodes or path[-1] not in self.nodes[path[:-1]].children):
                raise ValueError(f"expanded path {path} has no expanded parent listing it")

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
    def to_json(self) -> str:
        nodes = [
            {"path": list(p), "children": {str(k): v for k, v in n.children.items()}, "other": n.other}
            for p, n in sorted(self.nodes.items(), key=lambda kv: (len(kv[0]), kv[0]))
        ]
        return json.dumps({"nodes": nodes, "details": self.details}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> RefusalReadout:
        data = json.loads(text)
        nodes = {
            tuple(n["path"]): Node({int(k): float(v) for k, v in n["children"].items()}, float(n["other"]))
            for n in data["nodes"]
        }
        return cls(nodes, data.get("details", {}))

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


BIG = 1e4  # stands in for the +-infinite outcome of a leaf (finite, so min/max never meet inf - inf)


class MarginReader:
    """Margins from the final hidden states at the read-out positions, for one model and readout.

    Two readings of the same trie (docs: the module docstring):
    - `margin`, the *decision margin*: greedy decoding picks the most likely next token at each
      expanded prefix. At a node, let a (b) be the best log-probability among next tokens that lead to
      refusal (compliance): leaves by r > 0.5, expanded children by the sign of their own margin. The
      node's margin is a - b, capped by the chosen child's margin when greedy continues into an
      expanded prefix. Positive = greedy decoding refuses. It is continuous in the logits.
    - `sampled`: log P(refuse) - log P(comply) when sampling at temperature 1, summing over all
      openings weighted by r.
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

    def log_probs(self, states: torch.Tensor) -> torch.Tensor:
        """[batch, 1 + T, d_model] -> [batch, 1 + T, vocab] next-token log-probabilities (float64)."""
        w = self.lm.unembed.weight
        bias = getattr(self.lm.unembed, "bias", None)
        # one [batch * (1 + T), d_model] @ [d_model, vocab] matmul: a non-contiguous 3D input that
        # requires grad would otherwise go through bmm with the weight expanded per row (profiled on one
        # 16-row gradient batch of the default model: that bmm took 12.5 of 44 CPU-seconds)
        flat = states.to(w.dtype).reshape(-1, states.shape[-1])
        logits = (flat @ w.T).view(*states.shape[:-1], -1)
        if bias is not None:
            logits = logits + bias
        return torch.log_softmax(logits.double(), dim=-1)

    def margins(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(decision margin [batch], sampled margin [batch]), both float64."""
        logp = self.log_probs(states)
        batch, _, vocab = logp.shape
        rows = logp.unbind(dim=1)  # views; one gradient buffer in backward (indexing makes one per row)
        decision: dict[int, torch.Tensor] = {}  # state row -> [batch]
        sampled: dict[int, torch.Tensor] = {}  # state row -> [batch, 2]: log P(refuse), log P(comply)
        for row, leaves, expanded, other in self._plan:
            lp = rows[row]  # [batch, vocab]
            outcome = torch.full(
                (batch, vocab), BIG if other > 0.5 else -BIG, dtype=lp.dtype, device=lp.device
            )
            terms = []
            seen = [t for t, _ in leaves] + [t for t, _ in expanded]
            if leaves:
                ids = torch.tensor([t for t, _ in leaves], device=lp.device)
                r = torch.tensor([r for _, r in leaves], dtype=torch.float64, device=lp.device)
                outcome[:, ids] = torch.where(r > 0.5, BIG, -BIG).to(lp.dtype)
                terms.append(lp[:, ids].unsqueeze(1) + torch.stack([r.log(), (1 - r).log()]))  # [batch, 2, n]
            for tok, child in expanded:
                outcome[:, tok] = decision[child]
                terms.append((lp[:, tok].unsqueeze(1) + sampled[child]).unsqueeze(2))
            refuse = outcome > 0
            a = lp.masked_fill(~refuse, float("-inf")).max(dim=-1).values
            b = lp.masked_fill(refuse, float("-inf")).max(dim=-1).values
            chosen = outcome.gather(1, lp.argmax(dim=-1, keepdim=True)).squeeze(1)
            gap = (a - b).clamp(-BIG, BIG)  # a or b is -inf only if every token leads one way
            decision[row] = torch.where(gap > 0, torch.minimum(gap, chosen), torch.maximum(gap, chosen))

            rest = lp.clone()
            rest[:, seen] = float("-inf")
            rest = torch.logsumexp(rest, dim=-1, keepdim=True)  # [batch, 1] log P(an unlisted next token)
            rate = torch.tensor([other, 1 - other], dtype=torch.float64, device=lp.device)
            terms.append((rest + rate.log()).unsqueeze(2))
            sampled[row] = torch.logsumexp(torch.cat(terms, dim=2), dim=2)
        return decision[0], sampled[0][:, 0] - sampled[0][:, 1]


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

    def margins(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(decision margin [batch], sampled margin [batch]) from the recorded pass."""
        if self._final is None:
            raise RuntimeError("no forward pass was recorded: run the model inside hooks(probe.hook_pairs())")
        return self.reader.margins(self._final)

    @torch.no_grad()
    def layer_margins(self) -> torch.Tensor:
        """[batch, n_layers]: the decision margin read through the final norm from each block's output."""
        norm = self.lm.final_norm
        return torch.stack([self.reader.margins(norm(h))[0] for h in self._layer_states], dim=1)
