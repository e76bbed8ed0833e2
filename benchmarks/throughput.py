"""How close lexprobe runs to what this machine can do, side by side in one run, per dtype: the measured
matmul rate, lexprobe's achieved rate for score, generate, integrated gradients and occlusion on the
default model as a fraction of it, lexprobe's score against a naive transformers forward of the same
prompts, and lexprobe's integrated gradients against captum's `IntegratedGradients` at equal steps (on the
margin as a captum user computes it, and on lexprobe's own cached function); with each dtype's peak
memory.

    python benchmarks/throughput.py [--dtypes float32 bfloat16] [--prompts 64] [--ig-prompts 2]
                                    [--ig-steps 32] [--json FILE]

Each dtype runs in a process of its own (so its peak RSS is its own), one after the other; within it the
two sides of each comparison alternate (A B A B) and the faster of each side's two runs counts, so
a neighbour's burst hits both. Ratios are what to compare between machines; seconds are this one's.

- **matmul rate**: the best of several [M, 896] x [896, 4864] products (the default model's MLP) at
  M = 256, 1024 and 4096, measured before and after the studies.
- **FLOPs** are counted from the tokens each pass runs: per token 2 x (decoder weights) for the
  matmuls, 4 x layers x (query width) x (keys seen) for attention, and 2 x d_model x vocab for each
  position whose logits are read. A backward pass counts as its forward: the parameters take no
  gradient, so each product's backward is one product of the same size (the input's gradient; measured:
  a backward of 16 rows takes the time of their forward, 1.7 s each in float32). The template prefix
  runs once per call and counts once. `fraction` = achieved rate / matmul rate.
- **naive**: what a user would write: the whole chat-formatted prompt, left-padded in batches of
  `--batch-size`, through the model's own forward with logits at every position (transformers'
  default), no prefix cache. `score_vs_naive` = naive seconds / lexprobe seconds (> 1: lexprobe faster).
- **captum**: `captum.attr.IntegratedGradients`, Gauss-Legendre, `--ig-steps` steps, `--batch-size` rows
  per pass, one prompt at a time, on the margin as a function of the user-token embeddings computed as a
  captum user would: the whole chat prompt, template prefix included, through the model's own forward
  with logits at every position (`uncached_margin`). lexprobe's IG uses the same rule and steps (no
  refinement) on the same prompts together: the prefix from its cache, only the read-out positions'
  logits, the prompts' steps sharing batches. `ig_vs_captum` = captum seconds / lexprobe seconds.
  `ig_vs_captum_cached` gives captum lexprobe's own cached function (`PromptTarget.margin_of_embeds`)
  instead: there the two run the same passes, so it is near 1. The completeness errors of all three are
  printed: the functions agree to float32 rounding (about 1e-5 of the margin), so do the errors.

`--json FILE` writes: machine, torch, prompts, `matmul_gflops`, `flops_per_prompt`,
`score_roofline_fraction`, `score_vs_naive`, `peak_rss_mib` (each keyed by dtype), `ig_vs_captum`,
`ig_vs_captum_cached` and `ig_completeness_error` (float32), and every study's fraction (`fractions`).
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


def best_of(*sides) -> list[float]:
    """Seconds of each side, the faster of two runs, run in turn (A B C A B C)."""
    times: list[list[float]] = [[] for _ in sides]
    for _ in range(2):
        for f, got in zip(sides, times):
            start = time.perf_counter()
            f()
            got.append(time.perf_counter() - start)
    return [min(t) for t in times]


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


def uncached_margin(target):
    """`target`'s margin as a function of its user-token embeddings, computed the way a captum user
    would: the whole chat prompt, template prefix included, with the readout tree through the model's
    own forward (logits at every position, no cache), the margin read from the final norm's states.
    The same function as `target.margin_of_embeds`, with no prefix cache."""
    from lexprobe.probes.hooks import hooks
    from lexprobe.probes.margin import MarginProbe

    lm, scorer, batch = target.lm, target.scorer, target._batch
    p, q = scorer.prefix_len, batch.ids.shape[1]
    with torch.no_grad():
        prefix = lm.embed(torch.tensor([scorer.prefix.ids], device=lm.device))  # [1, p, d_model]
    causal = torch.tril(torch.ones(p, p + q, dtype=torch.bool))
    top = torch.zeros(p, p + q, dtype=lm.dtype).masked_fill(~causal, torch.finfo(lm.dtype).min)
    mask = torch.cat([top[None, None].to(lm.device), batch.attention_mask], dim=2)  # [1, 1, p + q, p + q]
    positions = torch.cat([torch.arange(p, device=lm.device)[None], batch.position_ids], dim=1)

    def margin(user: torch.Tensor) -> torch.Tensor:
        n = user.shape[0]
        embeds = torch.cat([prefix.expand(n, -1, -1), user.to(lm.dtype), target._rest.expand(n, -1, -1)], 1)
        probe = MarginProbe(lm, scorer.readout)
        with hooks(probe.hook_pairs()):
            lm.model(
                inputs_embeds=embeds,
                attention_mask=mask.expand(n, -1, -1, -1),
                position_ids=positions.expand(n, -1),
            )
        return getattr(probe.margins(target.temperature), target.settings.target)

    return margin


def captum_vs_lexprobe_ig(probe, texts: list[str], steps: int, batch_size: int) -> dict:
    """Seconds and completeness errors of captum's IntegratedGradients, on the margin computed as a
    user would (`uncached_margin`) and on lexprobe's own cached margin function, and of lexprobe's IG;
    the same rule (Gauss-Legendre) and steps."""
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
    functions = {
        "captum": [uncached_margin(t) for t in targets],
        "captum_cached": [t.margin_of_embeds for t in targets],
    }
    errors: dict[str, list[float]] = {}

    def captum_side(name):
        errors[name] = []
        for target, f in zip(targets, functions[name]):
            x = target.user_embeds.float()[None]
            base = target.baseline_embeds().float()[None]
            attr = IntegratedGradients(f).attribute(
                x, baselines=base, n_steps=steps, method="gausslegendre", internal_batch_size=batch_size
            )
            with torch.no_grad():
                f_x, f_b = (float(f(e)) for e in (x, base))
            errors[name].append(completeness_error(float(attr.sum()), f_x, f_b))

    def lexprobe_side():
        errors["lexprobe"] = [
            info["completeness_error"] for _, info in integrated_gradients_tokens(targets, settings)
        ]

    seconds = best_of(lambda: captum_side("captum"), lambda: captum_side("captum_cached"), lexprobe_side)
    return {
        **{f"{k}_s": v for k, v in zip(("captum", "captum_cached", "lexprobe"), seconds)},
        **{f"error_{k}": v for k, v in errors.items()},
    }


def measure(dtype_name: str, args: argparse.Namespace) -> dict:
    """Every figure of one dtype, in this process."""
    os.environ.setdefault("LEXPROBE_QUIET", "1")
    warnings.filterwarnings("ignore")
    import lexprobe
    from lexprobe.toolkit.behaviour.generation import generate
    from lexprobe.toolkit.io.progress import count
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
    naive_s, score_s = best_of(
        lambda: naive_forward(lm, fmt, texts, args.batch_size), lambda: probe.score(texts)
    )
    work = flops.forward(prefix, prefix, 0) + sum(
        flops.forward(s + tree, prefix + s + tree, 1 + tree) for s in suffixes
    )
    out["flops_per_prompt"] = work / len(texts)
    record(f"score ({count(len(texts), 'prompt')})", score_s, work, len(texts))
    out["naive_s"], out["score_s"] = naive_s, score_s

    start = time.perf_counter()
    done = generate(lm, fmt, texts, args.new_tokens, args.generate_batch_size, desc="generating")
    seconds = time.perf_counter() - start
    work = flops.forward(prefix, prefix, 0)
    for s, c in zip(suffixes, done):
        work += flops.forward(s, prefix + s, 1) + sum(
            flops.forward(1, prefix + s + k, 1) for k in range(len(c.token_ids))
        )
    record(
        f"generate ({len(texts)} x {args.new_tokens} tokens, {args.generate_batch_size} rows)",
        seconds,
        work,
        len(texts),
    )

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
            work += row * (int(m["rows_forward"]) + int(m["rows_backward"]))
        rule = ", its adaptive rule" if method == "integrated_gradients" else ""
        record(f"{method} ({count(len(some), 'prompt')}{rule})", seconds, work, len(some))
    out["matmul_gflops"] = max(peak, best_matmul_rate(dtype))  # the better of before and after
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The docstring as written, and every option's default."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    parser.add_argument("--prompts", type=int, default=64, help="XSTest prompts to score and generate for")
    parser.add_argument("--new-tokens", type=int, default=16, help="tokens each completion generates")
    parser.add_argument(
        "--ig-prompts", type=int, default=2, help="prompts attributed (IG against captum, and both methods)"
    )
    parser.add_argument(
        "--ig-steps", type=int, default=32, help="integration steps, both sides of the IG comparison"
    )
    parser.add_argument("--batch-size", type=int, default=16, help="rows per pass, every side but generation")
    parser.add_argument(
        "--generate-batch-size",
        type=int,
        default=48,
        help="completions decoded together (lexprobe's --generate-batch-size)",
    )
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()

    results = {}
    for name in args.dtypes:  # a fresh process each: its peak RSS is this dtype's
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results[name] = pool.submit(measure, name, args).result()
    first = results[args.dtypes[0]]
    print(
        f"machine: {first['machine']}; torch {torch.__version__}; batch {args.batch_size}, "
        f"generation {args.generate_batch_size}"
    )
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
                f"captum on lexprobe's cached function {ig['captum_cached_s']:.1f} s, lexprobe {ig['lexprobe_s']:.1f} s: "
                f"ig_vs_captum {ig['captum_s'] / ig['lexprobe_s']:.2f}, "
                f"ig_vs_captum_cached {ig['captum_cached_s'] / ig['lexprobe_s']:.2f}"
            )
            for side in ("captum", "captum_cached", "lexprobe"):
                print(f"  completeness error, {side}: {[round(e, 6) for e in ig['error_' + side]]}")
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
            data["ig_vs_captum_cached"] = ig["captum_cached_s"] / ig["lexprobe_s"]
            data["ig_completeness_error"] = {
                side: ig["error_" + side] for side in ("captum", "captum_cached", "lexprobe")
            }
        Path(args.json).write_text(json.dumps(data, indent=1) + "\n")
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
