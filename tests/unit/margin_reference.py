"""The margin readings computed the plain way, over the whole vocabulary at every node: the definition
`MarginReader` reduces (probes/margin.py computes it from a few whole-vocabulary statistics per
position). Kept here as the oracle that test_margin_reader.py checks the reduced form against."""

import torch

from lexprobe.probes.margin import BIG, MarginReader


def full_vocabulary_read(reader: MarginReader, logp: torch.Tensor, temperature=None):
    """(decision, sampled, smooth or None), each [batch], from log-probabilities [batch, 1 + T, vocab]."""
    batch, _, vocab = logp.shape
    rows = logp.unbind(dim=1)
    decision, sampled, smooth = {}, {}, {}
    for row, leaves, expanded, other in reader._plan:
        lp = rows[row]  # [batch, vocab]
        outcome = torch.full((batch, vocab), BIG if other > 0.5 else -BIG, dtype=lp.dtype)
        terms = []
        seen = [t for t, _ in leaves] + [t for t, _ in expanded]
        if leaves:
            ids = torch.tensor([t for t, _ in leaves])
            r = torch.tensor([r for _, r in leaves], dtype=torch.float64)
            outcome[:, ids] = torch.where(r > 0.5, BIG, -BIG).to(lp.dtype)
            terms.append(lp[:, ids].unsqueeze(1) + torch.stack([r.log(), (1 - r).log()]))
        for tok, child in expanded:
            outcome[:, tok] = decision[child]
            terms.append((lp[:, tok].unsqueeze(1) + sampled[child]).unsqueeze(2))
        decision[row] = _node_decision(lp, outcome, expanded, decision)
        rest = lp.clone()
        rest[:, seen] = float("-inf")
        rest = torch.logsumexp(rest, dim=-1, keepdim=True)
        rate = torch.tensor([other, 1 - other], dtype=torch.float64)
        terms.append((rest + rate.log()).unsqueeze(2))
        sampled[row] = torch.logsumexp(torch.cat(terms, dim=2), dim=2)
        if temperature is not None:
            smooth[row] = _node_smooth(lp, outcome, expanded, smooth, temperature)
    return decision[0], sampled[0][:, 0] - sampled[0][:, 1], smooth.get(0)


def _node_decision(lp, outcome, expanded, decision) -> torch.Tensor:
    """One node's decision margin [batch] from its log-probs [batch, vocab] and the outcome of every
    next token [batch, vocab] (+-BIG for leaves, the child's margin for expanded children)."""
    refuse = outcome > 0
    a = lp.masked_fill(~refuse, float("-inf")).amax(dim=-1)
    b = lp.masked_fill(refuse, float("-inf")).amax(dim=-1)
    chosen = outcome.gather(1, lp.argmax(dim=-1, keepdim=True)).squeeze(1)
    gap = a - b  # +-inf where every next token leads one way
    zero = torch.zeros_like(gap)
    margin = torch.where(
        gap > 0, torch.minimum(gap, chosen), torch.where(gap < 0, torch.maximum(gap, chosen), zero)
    )
    if expanded:
        # No token leads to refusal (a = -inf): the node refuses only if a child both becomes the greedy
        # choice and turns to refusal, so its margin is the best child's min(lead, child margin); and
        # symmetrically where no token leads to compliance (b = -inf).
        top2 = lp.topk(2, dim=-1).values if lp.shape[-1] > 1 else lp.repeat(1, 2)
        lead, child_margin = [], []
        for tok, child in expanded:
            rival = torch.where(lp[:, tok] >= top2[:, 0], top2[:, 1], top2[:, 0])
            lead.append(lp[:, tok] - rival)
            child_margin.append(decision[child])
        lead, child_margin = torch.stack(lead), torch.stack(child_margin)  # [n_children, batch]
        up = torch.minimum(lead, child_margin).amax(dim=0)
        down = torch.maximum(-lead, child_margin).amin(dim=0)
        margin = torch.where(torch.isinf(a), up, torch.where(torch.isinf(b), down, margin))
    return margin.clamp(-BIG, BIG)  # +-BIG only inside the tree: a subtree that can only refuse/comply


def _node_smooth(lp, outcome, expanded, smooth, temperature) -> torch.Tensor:
    """One node's smooth margin [batch]: the decision margin's recursion with every hard step softened
    at temperature T. An expanded child c counts toward refusal with weight sigmoid(m_c / T); the best
    refusal and compliance log-probabilities are T-logsumexps over weighted tokens (a_T, b_T); and the
    cap by the chosen child becomes an average over next tokens weighted by softmax(lp / T), a child's
    term being a soft min (m_c > 0) or soft max (m_c < 0) of the gap and its margin. A child on the
    other side still counts, with its log-probability moved by its margin (T log sigmoid(m_c / T) ->
    min(m_c, 0)), which is what removes the decision margin's steps."""
    t = temperature
    refuse = outcome > 0  # [batch, vocab]: refusal leaves (children are overwritten below)
    # log weights toward refusal and toward compliance; -BIG / T (weight 0 to any precision that
    # matters), not -inf, so that a node where every token leads one way keeps finite gradients
    log_w = torch.zeros_like(lp).masked_fill(~refuse, -BIG / t)
    log_v = torch.zeros_like(lp).masked_fill(refuse, -BIG / t)
    children = [(tok, smooth[child].clamp(-BIG, BIG)) for tok, child in expanded]
    for tok, m in children:
        log_w[:, tok] = torch.nn.functional.logsigmoid(m / t)  # no underflow to log(0)
        log_v[:, tok] = torch.nn.functional.logsigmoid(-m / t)
    a = t * torch.logsumexp(lp / t + log_w, dim=-1)
    b = t * torch.logsumexp(lp / t + log_v, dim=-1)
    gap = (a - b).clamp(-BIG, BIG)
    if not children:
        return gap
    p = torch.softmax(lp / t, dim=-1)  # [batch, vocab]: the soft greedy choice
    rest = 1 - sum(p[:, tok] for tok, _ in children)
    margin = rest * gap
    for tok, m in children:
        soft_min = -t * torch.logaddexp(-gap / t, -m / t)
        soft_max = t * torch.logaddexp(gap / t, m / t)
        w = torch.sigmoid(m / t)
        margin = margin + p[:, tok] * (w * soft_min + (1 - w) * soft_max)
    return margin
