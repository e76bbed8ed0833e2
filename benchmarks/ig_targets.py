"""Integrated gradients on the decision margin against the smooth margin, side by side in one run.

    python benchmarks/ig_targets.py [--model default] [--dtype float32] [--per-type 3] [--unsafe 16]

For each target: IG with lexprobe's default settings on (a) the refused safe XSTest prompts that have a
focus word (at most --per-type per type), with plausibility (top word = focus word) and faithfulness
(top-1 drop, comprehensiveness, against a random ranking), and (b) up to --unsafe refused unsafe
prompts (round-robin over types), where the decision margin most often has steps. Prints, per target
and set: prompts, share converged under the tolerance (5% completeness error), median error and steps,
hit rate and faithfulness. Faithfulness is measured twice: on each target's own margin (as
`lexprobe attribute` does), and on the decision margin for both, so the two rankings are compared on
the same quantity. Resumable under --out (default runs/ig-targets); `summary.json` there.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pandas as pd

TARGETS = ("decision", "smooth")


def _convergence(methods: pd.DataFrame) -> dict:
    ig = methods[methods["method"] == "integrated_gradients"]
    return {
        "prompts": len(ig),
        "converged": int(ig["converged"].sum()),
        "converged_share": round(float(ig["converged"].mean()), 3),
        "median_error": round(float(ig["completeness_error"].median()), 4),
        "median_steps": float(ig["steps"].median()),
        "seconds_per_prompt": round(float(ig["seconds"].mean()), 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--per-type", type=int, default=3)
    p.add_argument("--unsafe", type=int, default=16)
    p.add_argument("--out", default="runs/ig-targets")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from lexprobe.analyses import attribute, plausibility, score
    from lexprobe.analyses.options import ModelOptions, SuiteOptions
    from lexprobe.toolkit.attribution import AttributionSettings
    from lexprobe.toolkit.io.suites import load_suite

    out = Path(a.out)
    model = ModelOptions(model=a.model, dtype=a.dtype, device=a.device)
    summary: dict = {"model": a.model, "dtype": a.dtype, "safe": {}, "unsafe": {}}

    unsafe_ids = list(load_suite("xstest").frame.query("label == 'unsafe'")["id"])
    scores = score.run(
        score.ScoreConfig(
            out=str(out / "unsafe_scores"),
            model=model,
            suite=SuiteOptions(suite="xstest", ids=unsafe_ids),
            resume=True,
        )
    ).frame
    groups = [list(g["id"]) for _, g in scores[scores["margin"] > 0].groupby("type", sort=True)]
    chosen: list[str] = []
    while len(chosen) < a.unsafe and any(groups):
        chosen += [g.pop(0) for g in groups if g][: a.unsafe - len(chosen)]

    for target in TARGETS:
        settings = AttributionSettings(target=target)
        plaus = plausibility.run(
            plausibility.PlausibilityConfig(
                out=str(out / f"safe_{target}"),
                model=model,
                suite="xstest",
                methods=["integrated_gradients"],
                settings=settings,
                per_type=a.per_type,
                faithfulness=True,
            )
        )
        attr_dir = out / f"safe_{target}" / "attributions"
        faith = pd.read_csv(attr_dir / "faithfulness.csv")
        summary["safe"][target] = {
            **_convergence(pd.read_csv(attr_dir / "methods.csv", dtype={"id": str})),
            "hit_rate": round(float(plaus.frame["hit_rate"].iloc[0]), 3),
            "random_hit_rate": round(float(plaus.frame["random_rate"].iloc[0]), 3),
            **{
                m: round(float(faith[m].mean()), 3)
                for m in faith.columns
                if m.startswith(("top1_drop", "compr"))
            },
        }
        result = attribute.run(
            attribute.AttributeConfig(
                out=str(out / f"unsafe_{target}"), model=model, suite=SuiteOptions(suite="xstest", ids=chosen),
                methods=["integrated_gradients"], settings=settings, faithfulness=False, figures=False, resume=True,
            )
        )  # fmt: skip
        summary["unsafe"][target] = _convergence(result.methods)

    # both targets' rankings, judged on the same margin: the decision margin
    from lexprobe.analyses.session import open_session
    from lexprobe.toolkit.attribution import PromptTarget
    from lexprobe.toolkit.attribution import faithfulness as faith
    from lexprobe.toolkit.attribution.result import AttributionResult
    from lexprobe.toolkit.scoring.scorer import Scorer

    session = open_session(model)
    scorer = Scorer(session.lm, session.fmt, session.readout)
    for target in TARGETS:
        result = AttributionResult.load(out / f"safe_{target}" / "attributions")
        rows = []
        for prompt in result.prompts.itertuples():
            pt = PromptTarget(scorer, prompt.prompt, AttributionSettings(target="decision"))
            words = result.attributions[result.attributions["id"] == prompt.id].sort_values("word_index")
            reference = faith.random_reference(pt, 3, 0)
            rows.append(faith.evaluate(pt, words["score"].to_numpy(), reference)[0])
        judged = pd.DataFrame(rows).mean()
        summary["safe"][target] |= {
            f"on_decision_{m}": round(float(judged[m]), 3) for m in ("comprehensiveness", "top1_drop")
        } | {
            f"on_decision_{m}_random": round(float(judged[f"{m}_random"]), 3)
            for m in ("comprehensiveness", "top1_drop")
        }

    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    rows = [{"set": s, "target": t, **v} for s in ("safe", "unsafe") for t, v in summary[s].items()]
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
