"""The margin readings as functions of next-token log-probabilities: ties, bounds, signs, smoothness.

`MarginReader.read` takes log-probabilities [batch, 1 + T, vocab], so these tests drive it with
log-probabilities drawn by hypothesis (including exact ties, as bf16 logits produce) instead of a model.
"""

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from margin_reference import full_vocabulary_read

from lexprobe.probes.margin import MarginReader, Node, RefusalReadout

REFUSE, COMPLY, AS, CANNOT, DONT = range(5)
VOCAB = 7  # tokens 5 and 6 are unlisted everywhere


def _readout(root_refusal_leaf: bool = True) -> RefusalReadout:
    """Root: a refusal leaf (optional), a compliance leaf, and an expanded prefix "As" whose own next
    token decides (CANNOT refuses, DONT complies, anything else counts as compliance)."""
    root = {COMPLY: 0.1, AS: 0.5}
    if root_refusal_leaf:
        root[REFUSE] = 0.9
    return RefusalReadout({(): Node(root, 0.0), (AS,): Node({CANNOT: 0.9, DONT: 0.2}, 0.3)})


def _read(readout, logits: np.ndarray, temperature=None):
    logp = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), dim=-1)  # [batch, 2, vocab]
    return MarginReader(None, readout).read(logp, temperature), logp


def _greedy_refuses(readout, logp_row: torch.Tensor) -> bool:
    path = ()
    index = {p: i + 1 for i, p in enumerate(readout.tree)}
    while True:
        node = readout.nodes[path]
        tok = int(logp_row[index.get(path, 0)].argmax())
        if path + (tok,) in readout.nodes:
            path = path + (tok,)
            continue
        return node.children.get(tok, node.other) > 0.5


logit_rows = st.lists(
    st.lists(st.sampled_from([-4.0, -1.0, 0.0, 0.5, 1.0, 2.0, 3.0]), min_size=VOCAB, max_size=VOCAB),
    min_size=2,
    max_size=2,
)  # a coarse grid: exact ties are common, as in bf16


@settings(max_examples=300, deadline=None)
@given(st.lists(logit_rows, min_size=1, max_size=4), st.booleans())
def test_decision_margin_is_finite_bounded_and_has_greedy_sign(batch, root_refusal_leaf):
    readout = _readout(root_refusal_leaf)
    m, logp = _read(readout, np.array(batch))
    bound = (-logp.amin(dim=-1)).amax(dim=-1)  # the largest -log p at any read-out position
    assert torch.isfinite(m.decision).all()
    assert (m.decision.abs() <= bound + 1e-9).all()
    for row in range(len(batch)):
        value = float(m.decision[row])
        if value != 0:  # 0 is an exact tie somewhere on greedy's path: no side is decided
            assert (value > 0) == _greedy_refuses(readout, logp[row])


def test_an_exact_tie_is_a_zero_margin_not_a_placeholder():
    logits = np.zeros((1, 2, VOCAB))
    logits[0, 0, [REFUSE, COMPLY]] = 2.0  # best refusal and best compliance tie at the root
    m, _ = _read(_readout(), logits)
    assert float(m.decision[0]) == 0.0


def test_no_refusal_token_left_gives_a_finite_negative_margin():
    """Without a refusal leaf at the root, the only way to refuse is "As" then CANNOT: when "As" is not
    the greedy choice and DONT beats CANNOT, the margin says how far both are, not -BIG."""
    logits = np.zeros((1, 2, VOCAB))
    logits[0, 0, COMPLY] = 3.0
    logits[0, 0, AS] = 1.0
    logits[0, 1, DONT] = 2.0
    m, logp = _read(_readout(root_refusal_leaf=False), logits)
    lead = float(logp[0, 0, AS] - logp[0, 0, COMPLY])
    child = float(logp[0, 1, CANNOT] - logp[0, 1, DONT])
    assert float(m.decision[0]) == pytest.approx(max(lead, child))  # both must turn; the slower one counts


@settings(max_examples=300, deadline=None)
@given(st.lists(logit_rows, min_size=1, max_size=3), st.booleans(), st.integers(0, 2**16))
def test_smooth_margin_keeps_greedy_sign_and_has_no_steps(batch, root_refusal_leaf, seed):
    """As T -> 0 the smooth margin has greedy decoding's sign (as the decision margin does) and is a
    continuous function of the logits: a 1e-3 nudge moves it by at most 1e-2, where the decision margin
    may jump (a prefix greedy does not take changes side, or greedy switches into it)."""
    readout = _readout(root_refusal_leaf)
    rng = np.random.default_rng(seed)
    logits = np.array(batch) + rng.normal(0, 0.01, np.shape(batch))  # no exact ties
    m, logp = _read(readout, logits, temperature=1e-6)
    for row in range(len(batch)):
        if abs(float(m.decision[row])) > 0.01:
            assert (float(m.smooth[row]) > 0) == _greedy_refuses(readout, logp[row])
    nudged, _ = _read(readout, logits + rng.uniform(-1e-3, 1e-3, np.shape(batch)), temperature=1e-6)
    assert np.abs(nudged.smooth.numpy() - m.smooth.numpy()).max() < 1e-2


def test_smooth_margin_is_differentiable_where_the_decision_margin_steps():
    """Greedy switching from a refusal leaf to "As" (whose own margin is smaller) is a step in the
    decision margin; the smooth margin's gradient exists on both sides and it changes little."""
    readout = _readout()
    values = []
    for x in (1.999, 2.001):
        logits = torch.zeros((1, 2, VOCAB), dtype=torch.float64)
        logits[0, 0, REFUSE] = 2.0
        logits[0, 0, AS] = x
        logits[0, 1, CANNOT] = 0.5
        logits.requires_grad_(True)
        m = MarginReader(None, readout).read(torch.log_softmax(logits, -1), temperature=0.1)
        m.smooth.sum().backward()
        assert torch.isfinite(logits.grad).all()
        values.append((float(m.decision[0].detach()), float(m.smooth[0].detach())))
    (d0, s0), (d1, s1) = values
    assert abs(d0 - d1) > 1.0  # the step
    assert abs(s0 - s1) < 0.01


def test_readout_needs_both_outcomes():
    with pytest.raises(ValueError, match="both a refusal and a compliance"):
        RefusalReadout({(): Node({COMPLY: 0.1}, 0.0)})


@st.composite
def readouts_and_logits(draw):
    """A random trie over a small vocabulary (unlisted tokens leaning either way, nodes that list every
    token, two levels of expansion) and logits on a coarse grid, so exact ties are common."""
    vocab = draw(st.integers(3, 8))
    rates = st.sampled_from([0.0, 0.1, 0.4, 0.6, 0.9, 1.0])

    def node(depth):
        listed = draw(st.lists(st.integers(0, vocab - 1), min_size=1, max_size=vocab, unique=True))
        return {t: draw(rates) for t in listed}, draw(st.sampled_from([0.0, 0.2, 0.8]))

    children, other = node(0)
    nodes = {(): Node(children, other)}
    for tok in draw(st.lists(st.sampled_from(sorted(children)), max_size=2, unique=True)):
        grand, other = node(1)
        nodes[(tok,)] = Node(grand, other)
        deeper = draw(st.lists(st.sampled_from(sorted(grand)), max_size=1))
        if deeper:
            nodes[(tok, deeper[0])] = Node(*node(2))
    try:
        readout = RefusalReadout(nodes)
    except ValueError:  # one outcome only: not a readout
        assume(False)
    batch = draw(st.integers(1, 3))
    grid = st.sampled_from([-3.0, -1.0, 0.0, 0.5, 2.0])
    logits = draw(
        st.lists(st.lists(st.lists(grid, min_size=vocab, max_size=vocab), min_size=1 + len(readout.tree),
                          max_size=1 + len(readout.tree)), min_size=batch, max_size=batch)
    )  # fmt: skip
    return readout, np.array(logits)


@settings(max_examples=300, deadline=None)
@given(readouts_and_logits(), st.sampled_from([None, 0.05, 0.5]), st.floats(-5, 5))
def test_reduced_reader_is_the_full_vocabulary_definition(case, temperature, shift):
    """The reader works from a few whole-vocabulary statistics per position; its readings and their
    gradients are those of the recursion run over every token (tests/unit/margin_reference.py), and
    logits shifted by any constant per position read the same as log-probabilities."""
    readout, logits = case
    reader = MarginReader(None, readout)
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(x, dim=-1)
    want = full_vocabulary_read(reader, logp, temperature)
    if (want[0].abs() > (-logp.detach().amin(dim=-1)).amax(dim=-1)).any():  # every token leads one way
        with pytest.raises(RuntimeError, match="outside its bound"):
            reader.read(logp, temperature)
        return
    got = reader.read(logp, temperature)
    from_logits = reader.read(x.detach() + shift, temperature)
    for w, g, s in zip(want, got, from_logits):
        if w is None:
            assert g is None and s is None
            continue
        np.testing.assert_allclose(g.detach().numpy(), w.detach().numpy(), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s.numpy(), w.detach().numpy(), rtol=1e-9, atol=1e-8)
    smooth_ones = [m for m in (want[1], want[2]) if m is not None]  # smooth in the logits: same gradients
    (grad_want,) = torch.autograd.grad(sum(m.sum() for m in smooth_ones), x, retain_graph=True)
    (grad_got,) = torch.autograd.grad(sum(m.sum() for m in (got.sampled, got.smooth) if m is not None), x)
    np.testing.assert_allclose(grad_got.numpy(), grad_want.numpy(), rtol=1e-7, atol=1e-9)


def test_float32_gradients_have_no_subnormal_values():
    """Unlikely tokens' softmax weights at a low temperature underflow float32's normal range; their
    gradient comes back as 0, not as subnormal numbers that slow every later CPU matmul, and the rest
    equals the gradient computed in float64."""
    readout = _readout()
    logits = torch.zeros((2, 2, 5000), dtype=torch.float64)
    logits[:, :, :VOCAB] = torch.tensor([3.0, 1.0, 2.5, 0.5, 0.2, 0.0, 0.1], dtype=torch.float64)
    logits[:, :, VOCAB:] = torch.linspace(-200, 0, 5000 - VOCAB, dtype=torch.float64)
    grads = {}
    for dtype in (torch.float32, torch.float64):
        x = logits.to(dtype).requires_grad_(True)
        m = MarginReader(None, readout).read(x, temperature=0.05)
        (grads[dtype],) = torch.autograd.grad(m.smooth.sum(), x)
    g32 = grads[torch.float32]
    tiny = torch.finfo(torch.float32).tiny
    assert not ((g32 != 0) & (g32.abs() < tiny)).any()
    assert ((grads[torch.float64].abs() < tiny) & (grads[torch.float64] != 0)).any()  # there were some
    np.testing.assert_allclose(g32.double().numpy(), grads[torch.float64].numpy(), atol=1e-6)
