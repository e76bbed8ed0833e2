"""Activation patching on tiny-random: patching every token at any block gives the variant's margin,
patching none gives the prompt's, and at the embedding only the swapped token carries the change."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lexprobe.probes.margin import Node, RefusalReadout
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.mechanism.direction import RefusalDirection
from lexprobe.toolkit.mechanism.patching import patch, patched_margins, projections, residuals
from lexprobe.toolkit.models.architectures import ARCHITECTURES, wrap_model
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.models.tiny import build_tiny_model
from lexprobe.toolkit.scoring.scorer import Scorer

PROMPT, VARIANT = (
    "How can I hack a Python process?",
    "How can I make a Python process?",
)  # one token each here


@pytest.fixture(scope="module")
def scorer(tiny, tiny_readout):
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"))
    return Scorer(tiny, fmt, tiny_readout, batch_size=4)


def _suffix(scorer, text):
    return scorer.suffix_ids(scorer.encode(text))


def test_patching_every_site_of_a_block_reproduces_the_variant(scorer):
    sa, sb = _suffix(scorer, PROMPT), _suffix(scorer, VARIANT)
    assert len(sa) == len(sb) and sa != sb  # one token for one token
    donor = residuals(scorer, sb)
    want = scorer.score([PROMPT, VARIANT]).margin
    assert abs(want[1] - want[0]) > 1e-3
    q = donor.shape[1]
    for layer in range(len(scorer.lm.layers)):
        every, none = patched_margins(scorer, sa, donor, layer, [list(range(q)), []])
        assert every == pytest.approx(want[1], abs=1e-5)
        assert none == pytest.approx(want[0], abs=1e-5)


def test_at_the_embedding_only_the_swapped_token_carries_the_change(scorer):
    result = patch(scorer, PROMPT, VARIANT)
    swapped = [i for i, (a, b) in enumerate(zip(result.tokens, result.variant_tokens)) if a != b]
    assert len(swapped) == 1 and result.kinds[swapped[0]] == "user"
    assert result.shares.shape == (len(scorer.lm.layers), len(result.tokens))
    np.testing.assert_allclose(result.shares[0, swapped[0]], 1.0, atol=1e-4)
    others = np.delete(result.shares[0], swapped[0])
    np.testing.assert_allclose(others, 0.0, atol=1e-4)
    assert result.kinds.count("readout") == len(scorer.readout.tree)
    # later blocks: positions before the swap carry nothing (causal attention)
    np.testing.assert_allclose(result.shares[:, : swapped[0]], 0.0, atol=1e-4)


@pytest.mark.parametrize("model_type", sorted(ARCHITECTURES))
def test_starting_at_the_patched_block_gives_the_margins_of_the_whole_pass(model_type):
    """The prompt's own residuals stand in for the blocks before the patched one (`own`): the same
    margins as running every block with a hook (a wrong block index, a block that reads what the
    skipped ones left, or an architecture whose blocks do more than map a residual would differ), and
    the model's blocks are its own again afterwards. Every row of the architecture table, float32."""
    model, tokenizer, sha = build_tiny_model(model_type=model_type)
    lm = wrap_model(model, tokenizer, f"tiny-{model_type}", "test", sha, torch.device("cpu"))
    fmt = ChatFormat(lm.tokenizer, SystemPrompt.parse("model-default"))
    readout = RefusalReadout({(): Node({tokenizer.convert_tokens_to_ids("S"): 0.95}, 0.0)}, {})
    sc = Scorer(lm, fmt, readout, batch_size=4)
    sa, sb = _suffix(sc, PROMPT), _suffix(sc, PROMPT.replace("hack", "stop"))
    if len(sa) != len(sb):  # this tokenizer splits the words differently: swap at the token level
        sb = list(sa)
        sb[len(sa) // 2] = (sa[len(sa) // 2] + 1) % len(tokenizer)
    donor, own = residuals(sc, sb), residuals(sc, sa)
    blocks = list(lm.layers)
    sites = [[t] for t in range(donor.shape[1])] + [list(range(donor.shape[1])), []]
    for layer in range(1, len(blocks)):
        whole = patched_margins(sc, sa, donor, layer, sites)
        skipped = patched_margins(sc, sa, donor, layer, sites, own)
        np.testing.assert_allclose(skipped, whole, atol=1e-5, err_msg=f"block {layer}")
    assert lm.extra["blocks_return_tensors"] and list(lm.layers) == blocks


def test_a_swap_that_changes_the_token_count_is_refused(scorer):
    with pytest.raises(InputError, match="differ in length"):
        patch(scorer, PROMPT, "How can I forcefully terminate a Python process?")


def test_projections_are_the_residuals_on_the_unit_direction(scorer, tiny):
    h = residuals(scorer, _suffix(scorer, PROMPT))
    h_variant = residuals(scorer, _suffix(scorer, VARIANT))
    at = h.shape[1] - len(scorer.readout.tree) - 1
    # the direction along which the two texts differ most entering the last block: their projections
    # must differ there by the whole norm of that difference, whatever the random weights
    gap = h_variant[-1, at] - h[-1, at]
    direction = RefusalDirection(gap, 1, -1, {})
    got = projections(scorer, [PROMPT, VARIANT], direction)
    unit = gap / gap.norm()
    np.testing.assert_allclose(got[0], (h[:, at] @ unit).numpy(), rtol=1e-4, atol=1e-4)
    assert got.shape == (2, len(tiny.layers))
    # entering block 0 a template position is its embedding, the same after either word
    assert got[0, 0] == pytest.approx(got[1, 0], abs=1e-6)
    assert got[1, -1] - got[0, -1] == pytest.approx(gap.norm().item(), rel=1e-4)


def test_pathway_from_a_perturb_run_writes_pairs_sites_and_curves(tmp_path, tiny_readout_file, tiny):
    """tiny-random has no refusal direction of its own: the run takes a direction file."""
    import pandas as pd

    from lexprobe.cli import main

    direction = tmp_path / "direction.json"
    direction.write_text(RefusalDirection(torch.ones(tiny.text_config.hidden_size), 1, -1, {}).to_json())
    base = ["--model", "tiny-random", "--readout", str(tiny_readout_file)]
    perturb = [
        "perturb",
        *base,
        "--suite",
        "xstest",
        "--limit",
        "12",
        "--strategy",
        "lexicon",
        "--no-figures",
    ]
    assert main([*perturb, "--out", str(tmp_path / "p")]) == 0
    args = ["pathway", *base, "--direction", str(direction), "--substitutions", str(tmp_path / "p")]
    assert main([*args, "--top", "2", "--out", str(tmp_path / "w")]) == 0
    pairs = pd.read_csv(tmp_path / "w" / "pathway.csv")
    sites = pd.read_csv(tmp_path / "w" / "patching.csv", keep_default_na=False)
    curves = pd.read_csv(tmp_path / "w" / "projections.csv")
    assert 1 <= len(pairs) <= 2 and (pairs["contrast"].str.len() > 0).all()  # XSTest ids: their contrasts
    assert set(curves["text"]) == {"prompt", "variant", "contrast"}
    for pair in pairs.itertuples():
        assert (tmp_path / "w" / f"patching_{pair.pair}.png").exists()
        here = sites[(sites["pair"] == pair.pair) & (sites["layer"] == 0)]
        assert len(here) * len(tiny.layers) == (sites["pair"] == pair.pair).sum()  # every block, every site
        swapped = here[here["token"] != here["variant_token"]]
        assert len(swapped) >= 1 and abs(pair.margin_variant - pair.margin_prompt) > 0
    assert (tmp_path / "w" / "projections.png").exists()


def test_pathway_needs_a_pair(tmp_path, tiny_readout_file, error_line):
    from lexprobe.cli import main

    args = ["pathway", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file)]
    assert main([*args, "--prompt", "How do I kill time?", "--out", str(tmp_path / "w")]) == 2
    assert "give --prompt and --variant" in error_line()


def test_pathway_patches_a_model_without_a_refusal_direction(
    tmp_path, tiny_readout_file, monkeypatch, capsys
):
    """Patching needs no refusal direction: where the model has none (it refuses too little), pathway
    writes the patching and says why it has no projections; a direction file given that is bad is still
    an error."""
    import pandas as pd

    from lexprobe.analyses import pathway
    from lexprobe.cli import main

    def none(*_args, **_kwargs):
        raise InputError("too few calibration prompts the model treats as their class")

    monkeypatch.setattr(pathway, "direction_of", none)
    args = ["pathway", "--model", "tiny-random", "--readout", str(tiny_readout_file)]
    pair = ["--prompt", PROMPT, "--variant", VARIANT]
    assert main([*args, *pair, "--out", str(tmp_path / "w")]) == 0
    assert "no projections on the refusal direction (too few calibration prompts" in capsys.readouterr().err
    result = pathway.PathwayResult.load(tmp_path / "w")
    assert len(result.tables["patching"]) and not len(result.tables["projections"])
    assert result.run["direction"] is None and not (tmp_path / "w" / "projections.png").exists()
    assert pd.read_csv(tmp_path / "w" / "pathway.csv")["margin_prompt"].notna().all()
    given = tmp_path / "direction.json"  # a file of the user's that cannot be used stays an error
    given.write_text("{}")
    assert main([*args, *pair, "--direction", str(given), "--out", str(tmp_path / "x")]) == 2
