"""Fixes and the file a chosen one travels in, on tiny-random and planted numbers: the gate's threshold
and the rule choose what they say, the frontier is the undominated settings, `mitigate` writes a row per
setting with paired CIs and a chosen.json that `--steer` applies to any command (the same margins as
mitigate measured), the false-refusal vector's orthogonalisation removes the share it names, and hostile
--steer files are one line with exit code 2."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from lexprobe.probes.steering import Gate, Steering
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.mechanism import fixes


def test_the_threshold_opens_the_gate_as_far_as_the_unsafe_budget_allows():
    # four safe prompts, four unsafe; all refused as they are, none with the direction ablated
    logits = np.array([-3.0, -2.0, -1.0, 2.0, -1.5, 1.0, 2.0, 3.0])
    is_safe = np.array([True, True, True, True, False, False, False, False])
    plain, ablated = np.ones(8), -np.ones(8)
    # with no unsafe drop allowed, the gate may only open below -1.5: two safe prompts
    t, info = fixes.choose_threshold(logits, plain, ablated, is_safe, max_unsafe_drop=0.0)
    assert -2.0 < t <= -1.5 and info["safe_refusal_rate"] == 0.5
    # a quarter of the unsafe prompts may go: it opens up to the unsafe prompt at -1.5 and the safe at -1
    t, info = fixes.choose_threshold(logits, plain, ablated, is_safe, max_unsafe_drop=0.25)
    assert -1.0 < t <= 1.0 and info["safe_refusal_rate"] == 0.25


def test_the_rule_takes_the_lowest_safe_rate_within_the_unsafe_budget():
    rows = [
        {"safe_refusal_rate": 0.4, "unsafe_refusal_rate": 0.8},  # as is
        {"safe_refusal_rate": 0.1, "unsafe_refusal_rate": 0.5},  # too costly
        {"safe_refusal_rate": 0.3, "unsafe_refusal_rate": 0.78},
        {"safe_refusal_rate": 0.3, "unsafe_refusal_rate": 0.79},  # a tie on safe: the first listed wins
        {"safe_refusal_rate": 0.2, "unsafe_refusal_rate": 0.8, "eligible": False},  # a note: never chosen
    ]
    assert fixes.choose(rows) == 2
    assert fixes.choose(rows, max_unsafe_drop=0.5) == 1
    assert fixes.choose(rows[:2]) == 0  # nothing within the budget: the model as it is


def test_the_frontier_is_the_settings_nothing_beats_on_both_rates():
    safe = np.array([0.4, 0.1, 0.3, 0.3, 0.35])
    unsafe = np.array([0.8, 0.5, 0.78, 0.6, 0.9])
    assert list(fixes.frontier(safe, unsafe)) == [False, True, True, False, True]


def test_partial_orthogonalisation_removes_the_share_it_names():
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(16, generator=g, dtype=torch.float64)
    unit = direction / direction.norm()
    raw = torch.randn(16, generator=g, dtype=torch.float64)
    fr = fixes.FalseRefusal(raw, unit)
    for c in (0.0, 0.5, 1.0):
        v = fr.vector(c).double()
        assert float(v @ unit) == pytest.approx((1 - c) * float(raw @ unit), abs=1e-5)
        torch.testing.assert_close(v - (v @ unit) * unit, raw - (raw @ unit) * unit, atol=1e-5, rtol=0)


def _chosen(tiny, tiny_probe, **meta):
    d = torch.randn(tiny.text_config.hidden_size, generator=torch.Generator().manual_seed(3))
    steering = Steering(d, ablate=1.0, name="refusal direction", gate=Gate(tiny_probe, 0.25, 0.5))
    model = {"model_spec": tiny.spec, "weights_sha256": tiny.weights_sha256}
    return steering, fixes.chosen_json(steering, {"model": model, "mitigation": "conditional", **meta})


def test_a_chosen_file_round_trips(tiny, tiny_probe, tmp_path):
    steering, text = _chosen(tiny, tiny_probe)
    path = tmp_path / "chosen.json"
    path.write_text(text)
    back, record = fixes.load_chosen(tmp_path, tiny)  # the folder stands for its chosen.json
    assert back.key == steering.key and back.describe() == steering.describe()
    torch.testing.assert_close(back.direction, steering.direction)
    assert back.gate.probe.sha256() == tiny_probe.sha256() and back.gate.threshold == 0.25
    assert record["mitigation"] == "conditional"


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(kind="direction"), "not a chosen.json"),
        (lambda d: d.update(format=99), "format 99"),
        (lambda d: d["steering"].update(ablate=3.0), "sha256"),
        (lambda d: d.update(mitigation="none"), "sha256"),  # what it says it is counts too
        (lambda d: d.update(format=True), "format True"),
        (
            lambda d: d["steering"].update(add=3.0, at=0) or d.update(sha256=fixes._digest(d)),
            "ablates its direction or adds it, not both",
        ),
        (
            lambda d: d.update(model="tiny-random") or d.update(sha256=fixes._digest(d)),
            "not a record of the model",
        ),
        (
            lambda d: d["steering"].update(ablate=-50.0) or d.update(sha256=fixes._digest(d)),
            "share from 0 to 2",
        ),
        (
            lambda d: d["model"].update(weights_sha256="f" * 64) or d.update(sha256=fixes._digest(d)),
            "chosen for the model",
        ),
    ],
)
def test_hostile_steer_files_are_one_line(
    tiny, tiny_probe, tmp_path, tiny_readout_file, error_line, edit, message
):
    from lexprobe.cli import main

    data = json.loads(_chosen(tiny, tiny_probe)[1])
    edit(data)
    path = tmp_path / "chosen.json"
    path.write_text(json.dumps(data))
    base = ["score", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file)]
    assert (
        main([*base, "--suite", "xstest", "--limit", "2", "--steer", str(path), "--out", str(tmp_path / "o")])
        == 2
    )
    assert message in error_line()
    assert not (tmp_path / "o" / "scores.csv").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"\xff\xfe", "UTF-8"),
        (b"[1, 2", "not JSON"),
        (b'{"kind": "x"}', "not a chosen.json"),
        ("dir", "a directory with no chosen.json"),
    ],
)
def test_unreadable_steer_files_are_one_line(tmp_path, tiny_readout_file, error_line, content, message):
    from lexprobe.cli import main

    path = tmp_path / "chosen.json"
    if content == "dir":
        path = tmp_path / "empty"
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    base = ["score", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file)]
    assert (
        main([*base, "--suite", "xstest", "--limit", "2", "--steer", str(path), "--out", str(tmp_path / "o")])
        == 2
    )
    assert message in error_line()


def test_a_steering_with_numbers_out_of_range_is_refused(tiny, tiny_probe):
    data = json.loads(_chosen(tiny, tiny_probe)[1])["steering"]
    for key, value in (
        ("ablate", float("inf")),
        ("ablate", -1.0),
        ("at", True),
        ("at", 1.5),
        ("vector", [0.0] * 4),
    ):
        with pytest.raises(InputError):
            Steering.from_dict({**data, key: value})


@pytest.fixture(scope="module")
def mitigated(tmp_path_factory, tiny_readout_file, tiny_probe_file):
    """`lexprobe mitigate` on tiny-random with a direction and a probe given: the suite limited to two
    types and their contrasts."""
    from lexprobe.cli import main
    from lexprobe.toolkit.mechanism.direction import RefusalDirection
    from lexprobe.toolkit.models.loader import load_model

    tiny = load_model("tiny-random", dtype="float32")
    out = tmp_path_factory.mktemp("mitigate")
    d = torch.randn(tiny.text_config.hidden_size, generator=torch.Generator().manual_seed(5))
    (out / "direction.json").write_text(RefusalDirection(d * 3, 1, -1, {}).to_json())
    args = ["mitigate", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file)]
    args += [
        "--suite",
        "xstest",
        "--type",
        "homonyms,contrast_homonyms",
        "--direction",
        str(out / "direction.json"),
    ]
    args += ["--harmfulness", str(tiny_probe_file), "--ablate", "1", "--selection-prompts", "6"]
    args += ["--generate-per-type", "2", "--max-new-tokens", "3"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEXPROBE_CACHE", str(out / "cache"))
        assert main([*args, "--out", str(out / "m")]) == 0
        assert main([*args, "--out", str(out / "again")]) == 0  # the selection split from the cache
    return out


def test_mitigate_writes_every_setting_with_paired_cis_and_a_chosen_file(mitigated):
    table = pd.read_csv(mitigated / "m" / "tradeoff.csv")
    kinds = list(zip(table["mitigation"], table["gate"].fillna("")))
    assert kinds[:4] == [
        ("none", ""),
        ("refusal_direction", ""),
        ("conditional", "hard"),
        ("conditional", "soft"),
    ]
    assert kinds[-1] == ("instruction", "")
    for side in ("safe", "unsafe"):
        rate, lo, hi = table[f"{side}_refusal_rate"], table[f"{side}_ci_low"], table[f"{side}_ci_high"]
        assert ((lo <= rate + 1e-12) & (rate <= hi + 1e-12)).all()
        change = table[f"{side}_change"]
        assert np.allclose(change, rate - rate.iloc[0])
        assert table[f"{side}_change_ci_low"].iloc[0] == 0 == table[f"{side}_change_ci_high"].iloc[0]
    assert table["chosen"].sum() == 1 and table["frontier"].any()
    selection = pd.read_csv(mitigated / "m" / "selection.csv")
    assert list(selection["mitigation"]) == list(table["mitigation"])
    assert selection["chosen"].tolist() == table["chosen"].tolist()
    chosen = json.loads((mitigated / "m" / "chosen.json").read_text())
    assert chosen["mitigation"] == table.loc[table["chosen"], "mitigation"].iloc[0]
    gens = pd.read_csv(mitigated / "m" / "generations.csv")
    assert set(gens["mitigation"]) == {"none", chosen["mitigation"]}
    assert (table["agreement"].notna()).sum() == len(set(gens["mitigation"]))
    assert (mitigated / "m" / "tradeoff.png").exists()
    gates = json.loads((mitigated / "m" / "run.json").read_text())["gates"]
    assert [g["chosen_on"] for g in gates.values()] == ["selection split"]  # a probe from a file


def test_the_fitted_probe_keeps_its_unseen_kinds_and_a_probe_from_elsewhere_has_none(
    tiny, tiny_readout, tiny_probe, tmp_path, monkeypatch
):
    """The fitted probe keeps each contrast prompt's logit from the fit that held its group out;
    `unseen_kinds` gives them back for that probe only, from the cache, and never fits one itself."""
    from lexprobe.toolkit.mechanism import harmfulness
    from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
    from lexprobe.toolkit.scoring.scorer import Scorer
    from lexprobe.toolkit.substitution.frames import calibration_sets

    monkeypatch.setenv("LEXPROBE_CACHE", str(tmp_path / "cache"))
    full = calibration_sets(4, 4)
    keep = {}
    for split in ("train", "val"):  # 3 prompts of each label of each contrast group, and the rest
        seen: Counter = Counter()
        keep[split] = []
        for i, (group, label) in enumerate(zip(full["groups"][split], full[split][1])):
            seen[group, label] += 1
            if not group or seen[group, label] <= 3:
                keep[split].append(i)
    small = {
        split: (
            [full[split][0][i] for i in keep[split]],
            full[split][1][keep[split]],
            [full[split][2][i] for i in keep[split]],
        )
        for split in ("train", "val")
    } | {"groups": {split: [full["groups"][split][i] for i in keep[split]] for split in ("train", "val")}}
    make_sets = lambda _train, _val: small  # noqa: E731
    scorer = Scorer(tiny, ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default")), tiny_readout, 8)
    assert harmfulness.unseen_kinds(scorer, "c", make_sets, tiny_probe) is None  # no fit, none made
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))
    probe = harmfulness.find_probe(scorer, "c", make_sets)[0]
    texts, labels, logits = harmfulness.unseen_kinds(scorer, "c", make_sets, probe)
    groups = np.asarray(small["groups"]["train"])
    assert sorted(texts) == sorted(np.asarray(small["train"][0])[groups != ""].tolist())
    assert np.isfinite(logits).all() and set(labels) == {0, 1}
    assert harmfulness.unseen_kinds(scorer, "c", make_sets, tiny_probe) is None  # not the fitted probe
    assert harmfulness.unseen_kinds(scorer, "another condition", make_sets, probe) is None


def test_a_second_run_takes_the_selection_split_from_the_cache(mitigated):
    first, again = (json.loads((mitigated / d / "run.json").read_text()) for d in ("m", "again"))
    assert again["wall_seconds"] < first["wall_seconds"]
    for name in ("selection.csv", "tradeoff.csv", "margins.csv"):
        a, b = (pd.read_csv(mitigated / d / name) for d in ("m", "again"))
        pd.testing.assert_frame_equal(a, b)
    assert (
        json.loads((mitigated / "m" / "chosen.json").read_text())["sha256"]
        == json.loads((mitigated / "again" / "chosen.json").read_text())["sha256"]
    )


def test_the_hard_gate_row_put_together_from_its_parts_is_what_the_gate_scores(
    tiny, tiny_readout, tiny_probe
):
    """mitigate puts a hard-gated row together from the plain and ablated margins and the gate's
    logits; the gated steering itself (a gate pass and a steered pass per batch) scores the same
    margins, with a threshold that opens the gate for half the prompts."""
    from lexprobe.analyses import mitigate
    from lexprobe.probes.steering import steered
    from lexprobe.toolkit.io.suites import load_suite
    from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
    from lexprobe.toolkit.scoring.scorer import Scorer

    texts = load_suite("xstest").frame["prompt"].tolist()[:24]
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"))
    scorer = Scorer(tiny, fmt, tiny_readout, batch_size=4)
    plain = scorer.score(texts).margin
    logits = mitigate.gate_logits_of(scorer, tiny_probe, texts)
    threshold = float(np.median(logits))
    vector = torch.randn(tiny.text_config.hidden_size, generator=torch.Generator().manual_seed(5)) * 3
    gated = Steering(vector, ablate=1.0, name="refusal direction", gate=Gate(tiny_probe, threshold, 0.0))
    settings = [
        mitigate.Setting("none"),
        mitigate.Setting("refusal_direction", 1.0, Steering(vector, ablate=1.0)),
        mitigate.Setting("conditional", 1.0, gated, gate="hard", threshold=threshold),
    ]
    none, ablated, hard = mitigate._margins(scorer, settings, texts, texts, "test", plain)
    with steered(tiny, gated):
        np.testing.assert_allclose(scorer.score(texts).margin, hard, atol=1e-4)
    opened = logits < threshold
    assert 0 < opened.sum() < len(texts) and not np.allclose(none, ablated, atol=1e-3)
    np.testing.assert_array_equal(hard, np.where(opened, ablated, none))


def test_steer_applies_the_chosen_fix_to_score_as_mitigate_measured_it(
    mitigated, tiny_readout_file, tmp_path
):
    from lexprobe.cli import main

    chosen = json.loads((mitigated / "m" / "chosen.json").read_text())
    args = ["score", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file)]
    args += ["--suite", "xstest", "--type", "homonyms,contrast_homonyms", "--steer", str(mitigated / "m")]
    assert main([*args, "--out", str(tmp_path / "s")]) == 0
    scores = pd.read_csv(tmp_path / "s" / "scores.csv")
    margins = pd.read_csv(mitigated / "m" / "margins.csv")
    row = margins[
        (margins["mitigation"] == chosen["mitigation"])
        & (margins["gate"].fillna("") == (chosen["gate"] or ""))
    ]
    row = row[np.isclose(row["strength"], chosen["strength"])].set_index("id")["margin"]
    np.testing.assert_allclose(scores.set_index("id")["margin"].loc[row.index], row, atol=1e-4)
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["steered_by"]["sha256"] == chosen["sha256"]


def test_a_resumed_run_must_be_steered_the_same_way(
    mitigated, tiny, tiny_probe, tiny_readout_file, tmp_path, error_line
):
    from lexprobe.cli import main

    other = tmp_path / "other.json"
    other.write_text(_chosen(tiny, tiny_probe)[1])
    base = [
        "score",
        "--model",
        "tiny-random",
        "--dtype",
        "float32",
        "--readout",
        str(tiny_readout_file),
        "--suite",
        "xstest",
    ]
    out = ["--out", str(tmp_path / "s")]
    assert main([*base, "--limit", "2", "--steer", str(mitigated / "m" / "chosen.json"), *out]) == 0
    assert main([*base, "--limit", "4", "--steer", str(other), "--resume", *out]) == 2
    assert "steering" in error_line()


def test_generate_under_a_chosen_fix_records_it(mitigated, tiny_readout_file, tmp_path):
    from lexprobe.cli import main

    args = ["generate", "--model", "tiny-random", "--dtype", "float32", "--readout", str(tiny_readout_file)]
    args += ["--suite", "xstest", "--limit", "3", "--max-new-tokens", "3", "--steer", str(mitigated / "m")]
    assert main([*args, "--out", str(tmp_path / "g")]) == 0
    run = json.loads((tmp_path / "g" / "run.json").read_text())
    assert run["steered_by"]["sha256"] == json.loads((mitigated / "m" / "chosen.json").read_text())["sha256"]


def test_a_gate_open_for_every_prompt_attributes_as_the_plain_steering(
    tiny, tiny_probe, tiny_readout_file, tmp_path
):
    """attribute (and so diagnose) runs under a gated fix: with the gate open for every prompt it equals
    the same steering without a gate."""
    from lexprobe.cli import main

    d = torch.randn(tiny.text_config.hidden_size, generator=torch.Generator().manual_seed(3))
    model = {"model_spec": tiny.spec, "weights_sha256": tiny.weights_sha256}
    for name, gate in (("open", Gate(tiny_probe, 1e9, 0.0)), ("plain", None)):
        steering = Steering(d, ablate=1.0, name="refusal direction", gate=gate)
        (tmp_path / f"{name}.json").write_text(fixes.chosen_json(steering, {"model": model}))
        args = [
            "attribute",
            "--model",
            "tiny-random",
            "--dtype",
            "float32",
            "--readout",
            str(tiny_readout_file),
        ]
        args += [
            "--suite",
            "xstest",
            "--limit",
            "2",
            "--method",
            "saliency,integrated_gradients",
            "--no-faithfulness",
        ]
        assert main([*args, "--steer", str(tmp_path / f"{name}.json"), "--out", str(tmp_path / name)]) == 0
    a, b = (pd.read_csv(tmp_path / n / "attributions.csv") for n in ("open", "plain"))
    np.testing.assert_allclose(a["score"], b["score"], rtol=1e-4, atol=1e-6)
