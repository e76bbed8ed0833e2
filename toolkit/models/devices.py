"""Devices and dtypes: what `--device` and `--dtype` name, and what `--dtype auto` picks where, and why."""

from __future__ import annotations

import platform
import re

import torch

from lexprobe.toolkit.errors import InputError


def dtype_name(dtype: torch.dtype) -> str:
    """A dtype as lexprobe spells it everywhere (run.json, cache keys, messages): `float32`, not
    `torch.float32`."""
    return str(dtype).removeprefix("torch.")


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA if torch sees one, else cpu), `cpu`, `cuda`, `cuda:N` or `mps`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name} asked for, but torch sees no CUDA device: use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise InputError(
                f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
        return torch.device("cuda", index)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise InputError("--device mps asked for, but torch sees no Apple GPU (MPS): use --device cpu")
        return torch.device("mps")
    raise InputError(f"unknown --device '{name}': use auto, cpu, cuda, cuda:N or mps")


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); without them bf16 is emulated."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def describe_machine(device: torch.device) -> str:
    """The hardware a number was measured on, in words: a timing or a calibration is a figure of it."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name)
    except OSError:
        pass
    bf16 = "native bf16" if cpu_has_fast_bf16() else "no native bf16"
    return f"{name}, {torch.get_num_threads()} threads, {bf16}"


# What `--dtype auto` picks, from benchmarks/gpu_check.py on the default model over XSTest (docs/models.md,
# "Dtypes, devices and architectures"): bf16 scores agree with float32 (sign 99.1%, same AUROC), and on
# a CPU with native bf16 scoring runs 4x faster in 2/3 of the memory (benchmarks/throughput.py); but
# integrated gradients reached their 5% completeness tolerance on 8 of 12 refused prompts in bf16
# against 12 of 12 in float32, so a run that attributes with a method that needs float32
# (`toolkit.attribution.core.needs_float32`: integrated gradients, GradientSHAP, input x gradient, a
# method of the user's) takes float32 everywhere.
AUTO_DTYPE_WHY = {
    "cuda": "auto: bfloat16 on CUDA; scores agree with float32, so do saliency and perturbation attributions "
    "(the readout stays float32)",
    "cuda-gradients": "auto: float32 on CUDA because this run attributes with a method less reliable in bf16 "
    "(integrated gradients, GradientSHAP, input x gradient) or one of your own",
    "cpu-bf16": "auto: bfloat16 on this CPU, which has native bf16; scores agree with float32, so do "
    "saliency and perturbation attributions (the readout stays float32)",
    "cpu-gradients": "auto: float32 on CPU because this run attributes with a method less reliable in bf16 "
    "(integrated gradients, GradientSHAP, input x gradient) or one of your own",
    "cpu": "auto: float32 on this CPU, which has no native bf16; emulated bf16 is slower",
    "other": "auto: float32; bf16 is not tested on this device",
}
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str, device: torch.device, gradients: bool = False) -> torch.dtype:
    return choose_dtype(name, device, gradients)[0]


def choose_dtype(name: str, device: torch.device, gradients: bool = False) -> tuple[torch.dtype, str]:
    """The weights' dtype for `--dtype name` on `device`, and why (recorded in run.json, printed on
    stderr). `gradients`: the run attributes with a method that needs float32 (integrated gradients converge
    there; `toolkit.attribution.core.needs_float32`), which `auto` then does in float32 everywhere.
    Whatever the weights' dtype, lexprobe computes logits, log-probabilities and margins in float32 or
    wider (`LoadedModel.logits`)."""
    if name != "auto":
        if name not in DTYPES:
            raise InputError(f"unknown --dtype '{name}': use float32, bfloat16, float16 or auto")
        return DTYPES[name], f"--dtype {name}"
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
        if gradients:
            return torch.float32, AUTO_DTYPE_WHY[f"{device.type}-gradients"]
        return torch.bfloat16, AUTO_DTYPE_WHY["cuda" if device.type == "cuda" else "cpu-bf16"]
    if device.type == "cpu":
        return torch.float32, AUTO_DTYPE_WHY["cpu"]
    return torch.float32, AUTO_DTYPE_WHY["other"]
