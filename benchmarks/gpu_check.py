"""bfloat16 against float32 on one device, side by side in one run: margins, IG, saliency, a perturb sweep.

    python benchmarks/gpu_check.py                       # CUDA (the default device)
    python benchmarks/gpu_check.py --device cpu --generate --ig-prompts 12

For each dtype, on the default model (or --model): the readout (calibrated in that dtype), scores of
every prompt of the suite, greedy generations labelled by the default classifier (--generate), integrated
gradients on the decision and the smooth margin and saliency on refused prompts, and a perturb sweep.
Then bf16 is scored once more with float32's readout, to separate arithmetic from readout differences,
and a batch of prompts is scored one at a time to check batched == unbatched in bf16.

Prints, per dtype: AUROC unsafe vs safe, AUROC vs generated refusals, IG convergence, seconds per stage;
and across dtypes: max and mean |margin difference|, decision-sign agreement, top-word agreement,
perturb delta correlation. Every stage writes a resumable lexprobe output under --out, so an
interrupted check continues where it stopped; `summary.json` there holds every figure printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

DTYPES = ("float32", "bfloat16")


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, round(time.perf_counter() - start, 1)


def _auroc(labels, scores) -> float | None:
    from lexprobe.toolkit.stats import auroc

    labels = np.asarray(labels, dtype=bool)
    return round(auroc(labels, scores), 4) if 0 < labels.sum() < len(labels) else None


def _refused_selection(scores: pd.DataFrame, n: int) -> list[str]:
    """Up to n refused prompts (margin > 0), round-robin over prompt types so every type is represented."""
    refused = scores[scores["margin"] > 0]
    groups = [g["id"].tolist() for _, g in refused.groupby("type", sort=True)]
    chosen = []
    while len(chosen) < n and any(groups):
        for g in groups:
            if g and len(chosen) < n:
                chosen.append(g.pop(0))
    return chosen


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--model", default="default")
    p.add_argument("--suite", default="xstest")
    p.add_argument("--out", default=None, help="default: runs/gpu-check-<device>")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--generate", action="store_true", help="also generate and classify (AUROC vs behaviour)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--ig-prompts", type=int, default=12, help="refused prompts for IG and saliency")
    p.add_argument("--perturb-type", default="homonyms", help="prompt type of the perturb sweep")
    p.add_argument("--unbatched", type=int, default=48, help="prompts scored one at a time in bf16")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lexprobe.analyses.attribute import AttributeConfig
    from lexprobe.analyses.attribute import run as attribute
    from lexprobe.analyses.generate import GenerateConfig
    from lexprobe.analyses.generate import run as generate
    from lexprobe.analyses.minimal_pairs import PerturbConfig
    from lexprobe.analyses.minimal_pairs import run as perturb
    from lexprobe.analyses.options import ModelOptions, SuiteOptions
    from lexprobe.analyses.score import ScoreConfig
    from lexprobe.analyses.score import run as score
    from lexprobe.analyses.session import open_session
    from lexprobe.toolkit.attribution import AttributionSettings
    from lexprobe.toolkit.behaviour.classify import classify, is_refusal
    from lexprobe.toolkit.scoring.scorer import Scorer

    out = Path(a.out or f"runs/gpu-check-{a.device.replace(':', '')}")
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"device": a.device, "model": a.model, "suite": a.suite, "by_dtype": {}, "stages": {}}

    def opts(dtype, readout=None, batch_size=a.batch_size):
        return ModelOptions(
            model=a.model, dtype=dtype, device=a.device, batch_size=batch_size, readout=readout
        )

    scores, seconds = {}, {}
    for dtype in DTYPES:
        session, t_load = _timed(lambda dtype=dtype: open_session(opts(dtype)))  # calibrates on first use
        seconds[dtype] = {"load_and_readout": t_load}
        readout_file = out / f"readout_{dtype}.json"
        readout_file.write_text(session.readout.to_json())
        res, t = _timed(
            lambda dtype=dtype: score(
                ScoreConfig(
                    out=str(out / f"score_{dtype}"),
                    model=opts(dtype),
                    suite=SuiteOptions(suite=a.suite),
                    resume=True,
                )
            )
        )
        scores[dtype] = res.frame.set_index("id")
        seconds[dtype]["score"] = res.run.get("wall_seconds", t)
        summary["by_dtype"][dtype] = {
            "readout": {k: session.readout.details.get(k) for k in ("val_auroc", "smooth_temperature")},
            "auroc_unsafe_vs_safe": _auroc(scores[dtype]["label"] == "unsafe", scores[dtype]["margin"]),
            "refused_share": round(float((scores[dtype]["margin"] > 0).mean()), 4),
        }

    # bf16 arithmetic alone: float32's readout, bf16 weights
    same, _ = _timed(
        lambda: score(
            ScoreConfig(
                out=str(out / "score_bfloat16_f32readout"),
                model=opts("bfloat16", str(out / "readout_float32.json")),
                suite=SuiteOptions(suite=a.suite),
                resume=True,
            )
        )
    )
    scores["bfloat16_f32readout"] = same.frame.set_index("id")
    f32 = scores["float32"]["margin"]
    for name in ("bfloat16", "bfloat16_f32readout"):
        diff = (scores[name]["margin"] - f32.loc[scores[name].index]).abs()
        summary["stages"][f"margin_{name}_vs_float32"] = {
            "max_abs_diff": round(float(diff.max()), 4),
            "mean_abs_diff": round(float(diff.mean()), 4),
            "sign_agreement": round(float(((scores[name]["margin"] > 0) == (f32 > 0)).mean()), 4),
            "max_abs_margin": round(float(scores[name]["margin"].abs().max()), 3),
        }

    # batched == unbatched in bf16
    session = open_session(opts("bfloat16", str(out / "readout_float32.json")))
    texts = scores["float32"]["prompt"].tolist()[: a.unbatched]
    batched = Scorer(session.lm, session.fmt, session.readout, batch_size=a.batch_size).score(texts).margin
    single = Scorer(session.lm, session.fmt, session.readout, batch_size=1).score(texts).margin
    summary["stages"]["bf16_batched_vs_unbatched"] = {
        "prompts": len(texts),
        "max_abs_diff": round(float(np.abs(batched - single).max()), 4),
        "mean_abs_diff": round(float(np.abs(batched - single).mean()), 4),
    }

    if a.generate:
        for dtype in DTYPES:
            res, t = _timed(
                lambda dtype=dtype: generate(
                    GenerateConfig(
                        out=str(out / f"generate_{dtype}"),
                        model=opts(dtype),
                        suite=SuiteOptions(suite=a.suite),
                        max_new_tokens=a.max_new_tokens,
                        resume=True,
                    )
                )
            )
            seconds[dtype]["generate"] = res.run.get("wall_seconds", t)
            frame = res.frame.set_index("id")
            refused = np.array(
                [is_refusal(x) for x in classify(frame["completion"].tolist(), frame["prompt"].tolist())]
            )
            margin = scores[dtype]["margin"].loc[frame.index]
            summary["by_dtype"][dtype]["generated_refusal_rate"] = round(float(refused.mean()), 4)
            summary["by_dtype"][dtype]["auroc_vs_generated_refusals"] = _auroc(refused, margin)
            summary["by_dtype"][dtype]["margin_sign_accuracy"] = round(
                float(((margin > 0) == refused).mean()), 4
            )

    ids = _refused_selection(scores["float32"].reset_index(), a.ig_prompts)
    top_words = {}
    for dtype in DTYPES if ids else ():  # a model that refuses nothing has nothing to explain
        for target in ("decision", "smooth"):
            methods = ["integrated_gradients"] + (["saliency"] if target == "decision" else [])
            res, t = _timed(
                lambda dtype=dtype, target=target, methods=methods: attribute(
                    AttributeConfig(
                        out=str(out / f"attribute_{dtype}_{target}"),
                        model=opts(dtype),
                        suite=SuiteOptions(suite=a.suite, ids=ids),
                        methods=methods,
                        settings=AttributionSettings(target=target),
                        faithfulness=False,
                        figures=False,
                        resume=True,
                    )
                )
            )
            seconds[dtype][f"attribute_{target}"] = res.run.get("wall_seconds", t)
            ig = res.methods[res.methods["method"] == "integrated_gradients"]
            summary["by_dtype"][dtype][f"ig_{target}"] = {
                "prompts": len(ig),
                "converged": int(ig["converged"].sum()),
                "median_completeness_error": round(float(ig["completeness_error"].median()), 4),
                "median_steps": float(ig["steps"].median()),
            }
            attr = res.attributions
            for method in methods:
                rows = attr[attr["method"] == method]
                top = rows.loc[rows.groupby("id")["score"].idxmax()].set_index("id")["word"]
                top_words[(dtype, target, method)] = top
    for target, method in (
        ("decision", "integrated_gradients"),
        ("smooth", "integrated_gradients"),
        ("decision", "saliency"),
    ):
        if not ids:
            break
        x, y = top_words[("float32", target, method)], top_words[("bfloat16", target, method)]
        common = x.index.intersection(y.index)
        summary["stages"][f"top_word_agreement_{method}_{target}"] = round(
            float((x[common] == y[common]).mean()), 4
        )

    deltas = {}
    for dtype in DTYPES:
        res, t = _timed(
            lambda dtype=dtype: perturb(
                PerturbConfig(
                    out=str(out / f"perturb_{dtype}"),
                    model=opts(dtype),
                    suite=SuiteOptions(suite=a.suite, types=[a.perturb_type]),
                    strategies=["lexicon"],
                    figures=False,
                    resume=True,
                )
            )
        )
        seconds[dtype]["perturb"] = res.run.get("wall_seconds", t)
        deltas[dtype] = res.frame.set_index(["id", "word", "replacement"])["delta"]
    common = deltas["float32"].index.intersection(deltas["bfloat16"].index)
    x, y = deltas["float32"].loc[common], deltas["bfloat16"].loc[common]
    summary["stages"]["perturb_delta"] = {
        "substitutions": len(common),
        "pearson": round(float(np.corrcoef(x, y)[0, 1]), 4) if len(common) > 1 else None,
        "sign_agreement": round(float(((x > 0) == (y > 0)).mean()), 4),
        "max_abs_diff": round(float((x - y).abs().max()), 4),
    }
    summary["seconds"] = seconds
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    if shutil.which("nvidia-smi") and a.device.startswith("cuda"):
        os.system("nvidia-smi --query-gpu=name,memory.used --format=csv")


if __name__ == "__main__":
    main()
