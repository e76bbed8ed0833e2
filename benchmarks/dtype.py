"""float32 vs bfloat16 on this machine's CPU, side by side in one run: matmuls of the default model's
MLP shape and one forward pass of the default model (if installed).

    python benchmarks/dtype.py [--model default] [--repeat 20]

Prints GFLOP/s per dtype and the bf16/fp32 speed ratio (> 1 means bf16 is faster). `--dtype auto`
takes float32 on every CPU (lexprobe.toolkit.models.devices.choose_dtype); where this ratio is high, `--dtype bfloat16`
is the faster choice for scoring (its accuracy against float32: benchmarks/gpu_check.py).
"""

from __future__ import annotations

import argparse
import time

import torch


def matmul_rate(m: int, dtype: torch.dtype, repeat: int) -> float:
    a, w = torch.randn(m, 896, dtype=dtype), torch.randn(4864, 896, dtype=dtype)
    for _ in range(3):
        a @ w.T
    start = time.perf_counter()
    for _ in range(repeat):
        a @ w.T
    return 2 * m * 896 * 4864 * repeat / (time.perf_counter() - start) / 1e9


def forward_seconds(spec: str, dtype: str, repeat: int) -> float:
    from lexprobe.toolkit.models.devices import resolve_dtype
    from lexprobe.toolkit.models.loader import _load_cached

    dev = torch.device("cpu")
    lm = _load_cached(spec, resolve_dtype(dtype, dev), dev, None)
    ids = torch.randint(0, 1000, (16, 40))
    with torch.no_grad():
        lm.base(input_ids=ids)
        start = time.perf_counter()
        for _ in range(repeat):
            lm.base(input_ids=ids)
    return (time.perf_counter() - start) / repeat


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="default", help="model spec for the forward-pass timing ('' to skip)"
    )
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    from lexprobe.toolkit.models.devices import cpu_has_fast_bf16

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, native bf16: {cpu_has_fast_bf16()}")
    for m in (1, 16, 256):
        fp32, bf16 = matmul_rate(m, torch.float32, args.repeat), matmul_rate(m, torch.bfloat16, args.repeat)
        print(
            f"matmul {m}x896 @ 896x4864: float32 {fp32:6.1f} GFLOP/s, bf16 {bf16:6.1f} GFLOP/s, bf16/fp32 {bf16 / fp32:.2f}"
        )
    if args.model:
        n = max(2, args.repeat // 5)
        fp32, bf16 = forward_seconds(args.model, "float32", n), forward_seconds(args.model, "bfloat16", n)
        print(
            f"forward {args.model} [16 x 40 tokens]: float32 {fp32:.3f} s, bf16 {bf16:.3f} s, speed bf16/fp32 {fp32 / bf16:.2f}"
        )


if __name__ == "__main__":
    main()
