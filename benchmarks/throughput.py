"""How close lexprobe runs to what this machine's matmuls can do, in one run: the measured matmul rate
(GFLOP/s, in the dtype used) beside lexprobe's achieved rate for score, generate, integrated gradients
and occlusion on the default model, as a fraction of it, with the FLOP count per prompt.

    python benchmarks/throughput.py [--dtype float32] [--prompts 64] [--ig-prompts 2] [--new-tokens 16]

FLOPs are counted from the tokens each pass runs, the way the model computes them: per token
2 x (decoder weights) for the matmuls, 4 x layers x (query width) x (keys seen) for attention, and
2 x d_model x vocab for each position whose logits are read (score: the readout positions; generate:
one per step). A backward pass counts as twice its forward. The template prefix is run once per
call and counted once. The matmul rate is the best of several [M, 896] x [896, 4864] products (the
default model's MLP) at M = 256, 1024 and 4096 rows, so "fraction" says how much of the machine's
own dense-matmul rate a study reaches; the rest is attention, norms, the Python loop and memory.
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--prompts", type=int, default=64, help="XSTest prompts to score and generate for")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--ig-prompts", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per scoring pass")
    args = parser.parse_args()

    import lexprobe
    from lexprobe.toolkit.behaviour.generation import generate
    from lexprobe.toolkit.io.suites import load_suite
    from lexprobe.toolkit.models.devices import describe_machine

    dtype = getattr(torch, args.dtype)
    peak = best_matmul_rate(dtype)
    probe = lexprobe.load(
        "default",
        dtype=args.dtype,
        device="cpu",
        attribution=args.dtype == "float32",
        batch_size=args.batch_size,
    )
    lm, fmt, readout = probe.session.lm, probe.session.fmt, probe.session.readout
    flops = Flops(lm)
    texts = load_suite("xstest").frame["prompt"].tolist()[: args.prompts]
    prefix = len(fmt.prefix_ids)
    suffixes = [len(fmt.format(t).input_ids) - prefix for t in texts]
    tree = len(readout.tree)
    print(f"machine: {describe_machine(lm.device)}; torch {torch.__version__}; dtype {args.dtype}")
    print(
        f"matmul rate (best of [M,896]x[896,4864], M = 256..4096): {peak:.1f} GFLOP/s; batch {args.batch_size}"
    )
    print(
        f"prefix {prefix} tokens; mean suffix {sum(suffixes) / len(suffixes):.1f} tokens; readout tree {tree} tokens"
    )
    rows = []

    def record(name, seconds, total_flops, n):
        rows.append((name, seconds, total_flops / n / 1e9, total_flops / seconds / 1e9))

    start = time.perf_counter()
    probe.score(texts)
    seconds = time.perf_counter() - start
    work = flops.forward(prefix, prefix, 0) + sum(
        flops.forward(s + tree, prefix + s + tree, 1 + tree) for s in suffixes
    )
    record(f"score ({len(texts)} prompts)", seconds, work, len(texts))

    start = time.perf_counter()
    done = generate(lm, fmt, texts, args.new_tokens, 32, desc="generating")
    seconds = time.perf_counter() - start
    work = flops.forward(prefix, prefix, 0)
    for s, c in zip(suffixes, done):
        steps = len(c.token_ids)
        work += flops.forward(s, prefix + s, 1) + sum(
            flops.forward(1, prefix + s + k, 1) for k in range(steps)
        )
    record(f"generate ({len(texts)} x {args.new_tokens} tokens)", seconds, work, len(texts))

    some = texts[: args.ig_prompts]
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

    peak = max(peak, best_matmul_rate(dtype))  # measured again after the studies: the better of the two
    print(f"matmul rate measured again after the studies; the better of the two: {peak:.1f} GFLOP/s")
    print(f"\n{'study':<40} {'seconds':>8} {'GFLOP/prompt':>13} {'GFLOP/s':>9} {'fraction':>9}")
    for name, seconds, per_prompt, rate in rows:
        print(f"{name:<40} {seconds:8.1f} {per_prompt:13.2f} {rate:9.1f} {rate / peak:9.2f}")


if __name__ == "__main__":
    main()
