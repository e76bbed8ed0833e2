"""How close lexprobe runs to what this machine can do, side by side in one run, per dtype: the measured
matmul rate, lexprobe's achieved rate for score, generate, integrated gradients and occlusion on the
default model as a fraction of it, lexprobe's score against a naive transformers forward of the same
prompts, and lexprobe's integrated gradients against captum's `IntegratedGradients` on the same function
at equal steps; with each dtype's peak memory.

    python benchmarks/throughput.py [--dtypes float32 bfloat16] [--prompts 64] [--ig-prompts 2]
                                    [--ig-steps 32] [--json FILE]

Each dtype runs in a process of its own (so its peak RSS is its own), one after the other; within it the
two sides of each comparison alternate (A B A B) and the faster of each side's two runs counts, so
a neighbour's burst hits both. Ratios are what to compare between machines; seconds are this one's.

- **matmul rate**: the best of several [M, 896] x [896, 4864] products (the default model's MLP) at
  M = 256, 1024 and 4096, measured before and after the studies.
- **FLOPs** are counted from the tokens each pass runs: per token 2 x (decoder weights) for the
  matmuls, 4 x layers x (query width) x (keys seen) for attention, and 2 x d_model x vocab for each
  position whose logits are read. A backward pass counts as twice its forward. The template prefix
  runs once per call and counts once. `fraction` = achieved rate / matmul rate.
- **naive**: what a user would write: the whole chat-formatted prompt, left-padded in batches of
  `--batch-size`, through the model's own forward with logits at every position (transformers'
  default), no prefix cache. `score_vs_naive` = naive seconds / lexprobe seconds (> 1: lexprobe faster).
- **captum**: `captum.attr.IntegratedGradients` on lexprobe's own margin function of the user-token
  embeddings (`PromptTarget.margin_of_embeds`), Gauss-Legendre, `--ig-steps` steps, `--batch-size`
  rows per pass, one prompt at a time; lexprobe's IG with the same rule and steps (no refinement) on
  the same prompts together. `ig_vs_captum` = captum seconds / lexprobe seconds; both completeness
  errors are printed (the same function and points: they agree).

`--json FILE` writes: machine, torch, prompts, `matmul_gflops`, `flops_per_prompt`,
`score_roofline_fraction`, `score_vs_naive`, `peak_rss_mib` (each keyed by dtype), `ig_vs_captum` and
`ig_completeness_error` (float32), and every study's fraction (`fractions`).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from dtype import matmul_rate  # benchmarks/dtype.py, beside this script


def best_matmul_rate(dtype: torch.dtype, repeat: int = 10) -> float:
    """The best rate of the default model's MLP product over M = 256, 1024 and 4096 rows."""
    return max(matmul_rate(m, dtype, repeat) for m in (256, 1024, 4096))


class Flops:
    """FLOPs of the default model's passes, from its config."""

    def __init__(self, lm):
        cfg = lm.model.config
        self.d, self.layers, self.vocab = cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size
        self.q_width = cfg.num_attention_heads * (cfg.hidden_size // cfg.num_attention_heads)
        decoder = sum(p.numel() for p in lm.layers.parameters())
        self.per_token = 2 * decoder

    def forward(self, tokens: int, keys: int, read: int) -> float:
        """`tokens` run, each attending to about `keys` positions, `read` positions' logits."""
        return (
            tokens * (self.per_token + 4 * self.layers * self.q_width * keys) + read * 2 * self.d * self.vocab
        )


def best_of_two(a, b) -> tuple[float, float]:
    """Seconds of `a` and `b`, each the faster of two runs, run A B A B."""
    times: dict = {a: [], b: []}
    for _ in range(2):
        for f in (a, b):
            start = time.perf_counter()
            f()
            times[f].append(time.perf_counter() - start)
    return min(times[a]), min(times[b])


def naive_forward(lm, fmt, texts: list[str], batch_size: int) -> None:
    """The whole chat prompts through the model's own forward, left-padded, logits at every position."""
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            rows = [fmt.format(t).input_ids for t in texts[i : i + batch_size]]
            width = max(map(len, rows))
            ids = torch.tensor([[lm.pad_token_id] * (width - len(r)) + r for r in rows])
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device)).logits
            assert logits.shape[1] == width  # every position, as a user's forward gives them


def captum_vs_lexprobe_ig(probe, texts: list[str], steps: int, batch_size: int) -> dict:
    """Seconds and completeness errors of captum's IntegratedGradients and lexprobe's IG on the same
    margin function, rule (Gauss-Legendre) and steps."""
    from captum.attr import IntegratedGradients

    from lexprobe.toolkit.attribution import AttributionSettings, PromptTarget
    from lexprobe.toolkit.attribution.gradient import completeness_error, integrated_gradients_tokens
    from lexprobe.toolkit.scoring.scorer import Scorer

    session = probe.session
    scorer = Scorer(session.lm, session.fmt, session.readout, batch_size=batch_size)
    settings = AttributionSettings(
        n_steps=steps, max_steps=steps, rule="gausslegendre", batch_size=batch_size
    )
    targets = [PromptTarget(scorer, t, settings) for t in texts]
    errors: dict[str, list[float]] = {"captum": [], "lexprobe": []}

    def captum_side():
        errors["captum"] = []
        for target in targets:
            x = target.user_embeds.float()[None]
            base = target.baseline_embeds().float()[None]
            ig = IntegratedGradients(lambda user, t=target: t.margin_of_embeds(user))
            attr = ig.attribute(
                x, baselines=base, n_steps=steps, method="gausslegendre", internal_batch_size=batch_size
            )
            with torch.no_grad():
                f_x, f_b = (float(target.margin_of_embeds(e)) for e in (x, base))
            errors["captum"].append(completeness_error(float(attr.sum()), f_x, f_b))

    def lexprobe_side():
        errors["lexprobe"] = [
            info["completeness_error"] for _, info in integrated_gradients_tokens(targets, settings)
        ]

    captum_s, lexprobe_s = best_of_two(captum_side, lexprobe_side)
    return {"captum_s": captum_s, "lexprobe_s": lexprobe_s, **{f"error_{k}": v for k, v in errors.items()}}


def measure(dtype_name: str, args: argparse.Namespace) -> dict:
    """Every figure of one dtype, in this process."""
    os.environ.setdefault("LEXPROBE_QUIET", "1")
    warnings.filterwarnings("ignore")
    import lexprobe
    from lexprobe.toolkit.behaviour.generation import generate
    from lexprobe.toolkit.io.suites import load_suite
    from lexprobe.toolkit.models.devices import describe_machine

    dtype = getattr(torch, dtype_name)
    peak = best_matmul_rate(dtype)
    probe = lexprobe.load(
        "default",
        dtype=dtype_name,
        device="cpu",
        attribution=dtype_name == "float32",
        batch_size=args.batch_size,
    )
    lm, fmt, readout = probe.session.lm, probe.session.fmt, probe.session.readout
    flops = Flops(lm)
    texts = load_suite("xstest").frame["prompt"].tolist()[: args.prompts]
    prefix = len(fmt.prefix_ids)
    suffixes = [len(fmt.format(t).input_ids) - prefix for t in texts]
    tree = len(readout.tree)
    out: dict = {"machine": describe_machine(lm.device), "prefix": prefix, "tree": tree, "rows": []}
    out["mean_suffix"] = sum(suffixes) / len(suffixes)

    def record(name, seconds, total_flops, n):
        out["rows"].append((name, seconds, total_flops / n / 1e9, total_flops / seconds / 1e9))

    probe.score(texts[: args.batch_size])  # first passes set up kernels for the shapes
    naive_s, score_s = best_of_two(
        lambda: naive_forward(lm, fmt, texts, args.batch_size), lambda: probe.score(texts)
    )
    work = flops.forward(prefix, prefix, 0) + sum(
        flops.forward(s + tree, prefix + s + tree, 1 + tree) for s in suffixes
    )
    out["flops_per_prompt"] = work / len(texts)
    record(f"score ({len(texts)} prompts)", score_s, work, len(texts))
    out["naive_s"], out["score_s"] = naive_s, score_s

    start = time.perf_counter()
    done = generate(lm, fmt, texts, args.new_tokens, 32, desc="generating")
    seconds = time.perf_counter() - start
    work = flops.forward(prefix, prefix, 0)
    for s, c in zip(suffixes, done):
        work += flops.forward(s, prefix + s, 1) + sum(
            flops.forward(1, prefix + s + k, 1) for k in range(len(c.token_ids))
        )
    record(f"generate ({len(texts)} x {args.new_tokens} tokens)", seconds, work, len(texts))

    some = texts[: args.ig_prompts]
    if dtype_name == "float32":
        out["ig"] = captum_vs_lexprobe_ig(probe, some, args.ig_steps, args.batch_size)
    for method in ("integrated_gradients", "occlusion"):
        start = time.perf_counter()
        result = probe.attribute(some, methods=[method], faithfulness=False)
        seconds = time.perf_counter() - start
        work = 0.0
        for _, m in result.methods.iterrows():
            n = suffixes[int(m["id"]) - 1]  # a list of prompts gets ids 1..n
            row = flops.forward(n + tree, prefix + n + tree, 1 + tree)
            work += row * (int(m["rows_forward"]) + 2 * int(m["rows_backward"]))
        record(f"{method} ({len(some)} prompts)", seconds, work, len(some))
    out["matmul_gflops"] = max(peak, best_matmul_rate(dtype))  # the better of before and after
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    parser.add_argument("--prompts", type=int, default=64, help="XSTest prompts to score and generate for")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--ig-prompts", type=int, default=2)
    parser.add_argument(
        "--ig-steps", type=int, default=32, help="integration steps, both sides of the IG comparison"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="rows per pass, every side")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()

    results = {}
    for name in args.dtypes:  # a fresh process each: its peak RSS is this dtype's
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[name] = pool.submit(measure, name, args).result()
    first = results[args.dtypes[0]]
    print(f"machine: {first['machine']}; torch {torch.__version__}; batch {args.batch_size}")
    print(
        f"prefix {first['prefix']} tokens; mean suffix {first['mean_suffix']:.1f} tokens; readout tree {first['tree']} tokens"
    )
    for name, r in results.items():
        print(f"\n{name}: matmul rate {r['matmul_gflops']:.1f} GFLOP/s; peak RSS {r['peak_rss_mib']:.0f} MiB")
        print(f"{'study':<40} {'seconds':>8} {'GFLOP/prompt':>13} {'GFLOP/s':>9} {'fraction':>9}")
        for study, seconds, per_prompt, rate in r["rows"]:
            print(
                f"{study:<40} {seconds:8.2f} {per_prompt:13.2f} {rate:9.1f} {rate / r['matmul_gflops']:9.2f}"
            )
        print(
            f"naive forward {r['naive_s']:.2f} s, lexprobe score {r['score_s']:.2f} s: score_vs_naive {r['naive_s'] / r['score_s']:.2f}"
        )
        if "ig" in r:
            ig = r["ig"]
            print(
                f"IG, {args.ig_steps} Gauss-Legendre steps, {args.ig_prompts} prompts: captum {ig['captum_s']:.1f} s, "
                f"lexprobe {ig['lexprobe_s']:.1f} s, ig_vs_captum {ig['captum_s'] / ig['lexprobe_s']:.2f}; completeness "
                f"error captum {[round(e, 6) for e in ig['error_captum']]}, lexprobe {[round(e, 6) for e in ig['error_lexprobe']]}"
            )
    if args.json:
        fraction = {
            n: {s: rate / r["matmul_gflops"] for s, _, _, rate in r["rows"]} for n, r in results.items()
        }
        data = {
            "machine": first["machine"],
            "torch": torch.__version__,
            "prompts": args.prompts,
            "matmul_gflops": {n: r["matmul_gflops"] for n, r in results.items()},
            "flops_per_prompt": {n: r["flops_per_prompt"] for n, r in results.items()},
            "score_roofline_fraction": {n: next(iter(fraction[n].values())) for n in results},
            "score_vs_naive": {n: r["naive_s"] / r["score_s"] for n, r in results.items()},
            "peak_rss_mib": {n: r["peak_rss_mib"] for n, r in results.items()},
            "fractions": fraction,
        }
        if "float32" in results and "ig" in results["float32"]:
            ig = results["float32"]["ig"]
            data["ig_vs_captum"] = ig["captum_s"] / ig["lexprobe_s"]
            data["ig_completeness_error"] = {"captum": ig["error_captum"], "lexprobe": ig["error_lexprobe"]}
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
