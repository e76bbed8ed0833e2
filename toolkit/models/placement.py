"""`--device-map`: one model over several devices with accelerate, for models larger than one GPU.

`auto`, `balanced`, `balanced_low_0` and `sequential` let accelerate spread the decoder blocks over every
visible GPU (then CPU memory, then disk); a JSON object or file names a device per module (`0`, `cuda:1`,
`cpu`, `disk`). Each block then runs on its own device and accelerate's hooks move activations between
them; lexprobe's hooks, prefix KV cache and gradients follow the activations.

Three modules lexprobe reads directly, outside a forward pass, stay in memory on the main device: the
token embedding, the final norm and the unembedding (the readout multiplies final-normed states by the
unembedding's weight itself; the substitution engine reads the embedding matrix). An automatic map is
mended to keep them there; a map from the user that offloads them is refused.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

import torch

from lexprobe.toolkit.errors import InputError

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def parse_device_map(text: str | dict | None) -> str | dict | None:
    """A strategy name, or a {module: device} map from a JSON object, inline or in a file."""
    if text is None or isinstance(text, dict):
        return text
    text = text.strip()
    if text in STRATEGIES:
        return text
    source = text
    if not text.startswith("{"):
        path = Path(text).expanduser()
        if not path.is_file():
            raise InputError(
                f"--device-map '{text}' is neither {', '.join(STRATEGIES)} nor a JSON file of module -> device"
            )
        source, text = str(path), path.read_text(encoding="utf-8")
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"--device-map {source}: not JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise InputError(f"--device-map {source}: give a JSON object of module name -> device")
    return {str(k): _device(v, source) for k, v in mapping.items()}


def _device(value, source: str) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (value in ("cpu", "disk", "mps") or value.startswith("cuda")):
        return int(value.split(":")[1]) if value.startswith("cuda:") else value
    raise InputError(f"--device-map {source}: device {value!r} is not a GPU index, cuda:N, cpu, disk or mps")


def _owner(mapping: dict, module: str) -> str | None:
    """The map key that places `module` (itself or its closest ancestor; '' places everything)."""
    owners = [k for k in mapping if k == "" or module == k or module.startswith(k + ".")]
    return max(owners, key=len, default=None)


def main_device(mapping: dict) -> int | str:
    """Where inputs go and offloaded blocks run: the first GPU of the map, else the CPU."""
    gpus = [d for d in mapping.values() if d not in ("cpu", "disk")]
    return gpus[0] if gpus else "cpu"


def offloaded(mapping: dict, device) -> bool:
    """True for a device whose weights live elsewhere between forward passes (accelerate's offload)."""
    return device == "disk" or (device == "cpu" and main_device(mapping) != "cpu")


def pin(mapping: dict, model: torch.nn.Module, modules: list[str]) -> dict:
    """`mapping` with each of `modules` in memory on the main device: an ancestor that places it
    elsewhere is split into its children first."""
    mapping = dict(mapping)
    home = main_device(mapping)
    for name in modules:
        while True:
            key = _owner(mapping, name)
            if key is None or key == name or not offloaded(mapping, mapping[key]):
                break
            device = mapping.pop(key)
            parent = model.get_submodule(key) if key else model
            for child, _ in parent.named_children():
                mapping[f"{key}.{child}" if key else child] = device
            for pname, _ in parent.named_parameters(recurse=False):
                mapping[f"{key}.{pname}" if key else pname] = device
        key = _owner(mapping, name)
        if key is None or offloaded(mapping, mapping[key]):
            mapping[name] = home
    return mapping


def plan(model: torch.nn.Module, strategy: str | dict, dtype: torch.dtype, keep: list[str]) -> dict:
    """The {module: device} map for `strategy` on `model` (real or on the meta device), with the modules
    in `keep` in memory on the main device. A user's map must place every parameter and must not
    offload `keep`."""
    from accelerate import infer_auto_device_map
    from accelerate.utils import get_balanced_memory, get_max_memory

    if isinstance(strategy, dict):
        mapping = dict(strategy)
        names = [n for n, _ in model.named_parameters()]
        loose = [n for n in names if _owner(mapping, n) is None]
        if loose:
            raise InputError(
                f"--device-map places no device for {len(loose)} parameters (first: {loose[0]}): add their "
                'modules, or a "" entry for the rest'
            )
        unknown = [k for k in mapping if k and not _is_module(model, k)]
        if unknown:
            raise InputError(f"--device-map names '{unknown[0]}', which is not a module of this model")
        stray = [m for m in keep if offloaded(mapping, mapping[_owner(mapping, m)])]
        if stray:
            raise InputError(
                f"--device-map offloads {stray[0]}, which lexprobe reads outside forward passes: "
                f"place it on {main_device(mapping)}"
            )
        return mapping
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    if strategy == "sequential":
        memory = get_max_memory()
    else:
        memory = get_balanced_memory(
            model, dtype=dtype, no_split_module_classes=no_split, low_zero=strategy == "balanced_low_0"
        )
    mapping = infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=dtype)
    return pin(mapping, model, keep)


def _is_module(model: torch.nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        try:
            model.get_parameter(name)
            return True
        except AttributeError:
            return False


def offload_folder() -> str:
    """A folder for the blocks a map sends to disk, removed when the process ends."""
    from lexprobe.toolkit.io.cache import cache_dir

    root = cache_dir("offload")
    folder = tempfile.mkdtemp(prefix="run-", dir=root)
    atexit.register(shutil.rmtree, folder, True)
    return folder


def _keep(model_type: str) -> list[str]:
    from lexprobe.toolkit.models.architectures import architecture

    arch = architecture(model_type)
    return [arch.embed, arch.final_norm, arch.unembed]


def _disk(mapping: dict) -> dict:
    return {"offload_folder": offload_folder()} if "disk" in mapping.values() else {}


def placed_loading(directory, strategy: str | dict, dtype: torch.dtype) -> dict:
    """`from_pretrained` arguments that load the model in `directory` straight onto its map, planned on
    an empty (meta-device) copy of it."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("meta"):
        empty = AutoModelForCausalLM.from_config(config, dtype=dtype)
    mapping = plan(empty, strategy, dtype, _keep(config.model_type))
    return {"device_map": mapping, **_disk(mapping)}


def dispatch(model: torch.nn.Module, strategy: str | dict, dtype: torch.dtype) -> torch.nn.Module:
    """A model already in memory (built in code) spread over its map."""
    from accelerate import dispatch_model

    mapping = plan(model, strategy, dtype, _keep(model.config.model_type))
    folder = _disk(mapping).get("offload_folder")
    return dispatch_model(
        model, mapping, main_device=main_device(mapping), offload_dir=folder, force_hooks=True
    )
