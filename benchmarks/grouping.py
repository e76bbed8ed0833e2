"""Attributing prompts one at a time against side by side, in one run on the same loaded model: the
seconds of each, their ratio, and the largest difference between the two runs' numbers.

    python benchmarks/grouping.py [--model default] [--type homonyms] [--limit 8]
                                  [--methods integrated_gradients] [--methods saliency,occlusion]

Side by side (`lexprobe.analyses.attribute.GROUP` prompts, 8 by default) means: the faithfulness texts
of the group are scored in shared batches, and integrated gradients runs the groups' adaptive rules
in lockstep, each round's points of every unfinished prompt in shared batches. One at a time is the
same code with a group of one. Each `--methods` value is one comparison (faithfulness on, as
`lexprobe attribute` and `lexprobe diagnose` run it); its rows say how much the grouping saves there.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def run(probe, prompts, methods: list[str], group: int):
    from lexprobe.analyses import attribute as study

    saved, study.GROUP = study.GROUP, group
    try:
        start = time.perf_counter()
        result = probe.attribute(prompts, methods=methods)
        return time.perf_counter() - start, result
    finally:
        study.GROUP = saved


def largest_difference(a, b) -> float:
    out = 0.0
    for table in ("attributions", "faithfulness"):
        x, y = getattr(a, table), getattr(b, table)
        cols = [c for c in x.select_dtypes("number").columns if c in y]
        if len(x):
            out = max(out, float(np.nanmax(np.abs(x[cols].to_numpy(float) - y[cols].to_numpy(float)))))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="default")
    parser.add_argument("--type", default="homonyms", help="XSTest prompt type to attribute")
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--methods", action="append", help="comma list; repeat for more comparisons")
    args = parser.parse_args()

    import lexprobe
    from lexprobe.analyses import attribute as study
    from lexprobe.toolkit.io.suites import load_suite

    probe = lexprobe.load(args.model)
    frame = load_suite("xstest").select([args.type], None, args.limit).frame
    prompts = list(frame["prompt"])
    print(f"{len(prompts)} XSTest '{args.type}' prompts, {probe.session.lm.dtype}, group of {study.GROUP}")
    print(f"{'methods':<34}{'one at a time':>15}{'side by side':>14}{'ratio':>8}{'max |diff|':>12}")
    for methods in args.methods or ["integrated_gradients", "saliency,occlusion"]:
        names = methods.split(",")
        run(probe, prompts[:1], names, 1)  # warm-up: first-call costs out of both timings
        alone_s, alone = run(probe, prompts, names, 1)
        together_s, together = run(probe, prompts, names, study.GROUP)
        diff = largest_difference(alone, together)
        print(f"{methods:<34}{alone_s:>14.1f}s{together_s:>13.1f}s{alone_s / together_s:>8.2f}{diff:>12.2g}")


if __name__ == "__main__":
    main()
