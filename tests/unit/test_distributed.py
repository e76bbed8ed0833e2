"""Scoring sharded over Ray on a local cluster of 2 CPU workers (loopback only), on tiny-random: the
same rows as one process, resume across single-process and sharded runs, and a killed worker's shard
done again."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pandas as pd
import pytest
import ray

from lexprobe.cli import main


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _score(tmp_path, readout, out, *extra):
    args = ["score", "--model", "tiny-random", "--readout", str(readout), "--suite", "xstest"]
    return main([*args, "--batch-size", "4", "--out", str(tmp_path / out), *extra])


def _frame(tmp_path, out):
    return pd.read_csv(tmp_path / out / "scores.csv", keep_default_na=False)


def test_sharded_scores_equal_one_process(tmp_path, tiny_readout_file, cluster):
    assert _score(tmp_path, tiny_readout_file, "one", "--limit", "40") == 0
    assert _score(tmp_path, tiny_readout_file, "sharded", "--limit", "40", "--workers", "2") == 0
    one, sharded = _frame(tmp_path, "one"), _frame(tmp_path, "sharded")
    assert list(sharded["id"]) == list(one["id"]) and list(sharded.columns) == list(one.columns)
    np.testing.assert_allclose(sharded["margin"], one["margin"], atol=1e-5)
    np.testing.assert_allclose(sharded["margin_sampled"], one["margin_sampled"], atol=1e-5)
    run = json.loads((tmp_path / "sharded" / "run.json").read_text())
    assert run["status"] == "complete" and run["rows_written"] == 40
    assert run["sharding"]["workers"] == 2
    assert json.loads((tmp_path / "one" / "run.json").read_text())["sharding"] is None


def test_resume_mixes_single_process_and_sharded_runs(tmp_path, tiny_readout_file, cluster):
    assert _score(tmp_path, tiny_readout_file, "mixed", "--limit", "10") == 0
    assert _score(tmp_path, tiny_readout_file, "mixed", "--limit", "40", "--resume", "--workers", "2") == 0
    assert _score(tmp_path, tiny_readout_file, "one", "--limit", "40") == 0
    mixed, one = _frame(tmp_path, "mixed"), _frame(tmp_path, "one")
    assert list(mixed["id"]) == list(one["id"])
    np.testing.assert_allclose(mixed["margin"], one["margin"], atol=1e-5)
    assert json.loads((tmp_path / "mixed" / "run.json").read_text())["n_prompts_this_run"] == 30


def test_a_killed_workers_shard_is_done_again(tiny, tiny_readout, cluster):
    from lexprobe.analyses.score import score_shard
    from lexprobe.toolkit.distributed import Cluster, Replica
    from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
    from lexprobe.toolkit.scoring.scorer import Scorer

    system = SystemPrompt.parse("model-default")
    replica = Replica("tiny-random", "float32", "cpu", tiny.weights_sha256, system, tiny_readout.to_json(), 4)
    texts = [f"How do I kill process number {i}?" for i in range(12)]
    records = [{"id": str(i), "prompt": t} for i, t in enumerate(texts)]
    shards = [records[i : i + 4] for i in range(0, 12, 4)]
    with Cluster(replica, workers=2) as c:
        victim = ray.get(c.actors[0].pid.remote())
        os.kill(victim, signal.SIGKILL)  # the worker dies before it is handed its shards
        got = dict(c.run(score_shard, [(shard, False) for shard in shards]))
        assert ray.get(c.actors[0].pid.remote()) != victim  # restarted
    want = Scorer(tiny, ChatFormat(tiny.tokenizer, system), tiny_readout, 4).score(texts)
    assert sorted(got) == [0, 1, 2]
    margins = np.concatenate([got[k].margin for k in range(3)])
    np.testing.assert_allclose(margins, want.margin, atol=1e-5)


@pytest.mark.parametrize(
    ("address", "says"),
    [
        (["--ray-address", "127.0.0.1:1"], "no Ray cluster answers"),
        (["--ray-address", "nonsense"], "is not host:port"),
        (["--ray-address", ""], "--ray-address is empty"),
        (["--num-gpus", "1"], "--num-gpus needs --workers"),
    ],
)
def test_a_ray_address_that_does_not_answer_is_one_line_before_the_model_loads(
    tmp_path, tiny_readout_file, capsys, address, says
):
    assert _score(tmp_path, tiny_readout_file, "bad", *address) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0]
    assert not (tmp_path / "bad").exists()


def test_sharded_generation_equals_one_process(tmp_path, cluster):
    base = [
        "generate",
        "--model",
        "tiny-random",
        "--suite",
        "xstest",
        "--limit",
        "10",
        "--max-new-tokens",
        "6",
    ]
    assert main([*base, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--batch-size", "4", "--workers", "2", "--out", str(tmp_path / "sharded")]) == 0
    one, sharded = (
        pd.read_csv(tmp_path / d / "completions.csv", keep_default_na=False) for d in ("one", "sharded")
    )
    pd.testing.assert_frame_equal(one, sharded)


def test_sharded_attribution_equals_one_process(tmp_path, tiny_readout_file, cluster):
    base = ["attribute", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest"]
    base += [
        "--limit",
        "10",
        "--method",
        "integrated_gradients,occlusion",
        "--steps",
        "4",
        "--max-steps",
        "8",
    ]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--workers", "2", "--out", str(tmp_path / "sharded")]) == 0
    for table in ("attributions.csv", "faithfulness.csv", "prompts.csv"):
        one, sharded = (pd.read_csv(tmp_path / d / table, keep_default_na=False) for d in ("one", "sharded"))
        assert list(one["id"]) == list(sharded["id"]) and len(one) > 0, table
        numeric = one.select_dtypes("number").columns
        np.testing.assert_allclose(sharded[numeric].to_numpy(float), one[numeric].to_numpy(float), atol=1e-5)
    assert json.loads((tmp_path / "sharded" / "run.json").read_text())["sharding"]["workers"] == 2


def test_sharded_perturbation_equals_one_process(tmp_path, tiny_readout_file, cluster):
    base = ["perturb", "--model", "tiny-random", "--readout", str(tiny_readout_file), "--suite", "xstest"]
    base += ["--limit", "12", "--strategy", "lexicon", "--no-figures", "--batch-size", "4"]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    assert main([*base, "--workers", "2", "--out", str(tmp_path / "sharded")]) == 0
    one, sharded = (
        pd.read_csv(tmp_path / d / "substitutions.csv", keep_default_na=False) for d in ("one", "sharded")
    )
    assert len(one) >= 12 and list(one["variant"]) == list(sharded["variant"])
    np.testing.assert_allclose(sharded["margin_variant"], one["margin_variant"], atol=1e-5)
    np.testing.assert_allclose(sharded["delta"], one["delta"], atol=1e-5)
    runs = [json.loads((tmp_path / d / "run.json").read_text()) for d in ("one", "sharded")]
    assert runs[1]["sharding"]["workers"] == 2
    assert runs[0]["details"]["n_texts_scored_this_run"] == runs[1]["details"]["n_texts_scored_this_run"]


def test_more_gpus_than_the_cluster_has_is_one_line_not_a_wait(tmp_path, tiny_readout_file, capsys, cluster):
    assert (
        _score(tmp_path, tiny_readout_file, "gpu", "--limit", "4", "--workers", "1", "--num-gpus", "1") == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the Ray cluster has 0" in err[0]
