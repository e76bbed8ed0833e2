"""The architecture table and the loaded-model wrapper: where the decoder stack, embedding, final norm
and unembedding of each `model_type` live, and what its `forward` does to the logits."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

from lexprobe.toolkit.errors import ModelError
from lexprobe.toolkit.models.devices import dtype_name


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

    def logits(self, states: torch.Tensor, ids: torch.Tensor | None = None) -> torch.Tensor:
        """[..., d_model] final-normed states -> [..., vocab] logits as the model's `forward` computes
        them (bias, soft-capping, scaling), but always in float32: a bf16 or float16 model's logits would
        otherwise come in steps of its resolution (0.125 at 16 in bf16) and tie where they should not.
        With `ids`, only those tokens' logits [..., len(ids)]."""
        weight, bias = self._unembed_float32(ids)
        flat = states.to(weight.device).float().reshape(-1, states.shape[-1])  # one 2D matmul
        logits = (flat @ weight.T).view(*states.shape[:-1], -1)
        return self.finish_logits(logits if bias is None else logits + bias)

    def finish_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """The model's own steps after the unembedding and its bias (scaling, soft-capping): monotone
        increasing, so they keep the logits' order."""
        cfg = self.text_config
        if self.arch.logit_multiplier and getattr(cfg, self.arch.logit_multiplier, None) is not None:
            logits = logits * float(getattr(cfg, self.arch.logit_multiplier))
        if self.arch.logit_divisor and getattr(cfg, self.arch.logit_divisor, None) is not None:
            logits = logits / float(getattr(cfg, self.arch.logit_divisor))
        if self.arch.logit_softcap and getattr(cfg, self.arch.logit_softcap, None) is not None:
            cap = float(getattr(cfg, self.arch.logit_softcap))
            logits = torch.tanh(logits / cap) * cap
        return logits

    @torch.no_grad()
    def unembed_screen(self, states: torch.Tensor) -> tuple[torch.Tensor, float] | None:
        """The unembedding's matmul in a bf16 or float16 model's own dtype (4-5x faster than float32 on a
        CPU with native bf16): (raw [..., vocab] in that dtype, before `finish_logits`; a bound on how far
        any raw value is from the float32 product). The bound is 2^-5 of the largest magnitude, 8 times
        bf16's unit roundoff (64 times float16's), against accumulation in reduced precision too. None for
        a float32 model or an unembedding with a bias (its raw values would not keep the logits' order)."""
        weight = self.unembed.weight
        if (
            weight.dtype not in (torch.bfloat16, torch.float16)
            or getattr(self.unembed, "bias", None) is not None
        ):
            return None
        flat = states.to(weight.device, weight.dtype).reshape(-1, states.shape[-1])  # 2D: no batched copies
        raw = (flat @ weight.T).view(*states.shape[:-1], -1)
        if raw.numel() == 0:
            return raw, 0.0
        top, bottom = raw.amax().float(), raw.amin().float()
        return raw, 2**-5 * float(torch.maximum(top.abs(), bottom.abs()))

    def _unembed_float32(self, ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The unembedding weight [vocab, d_model] and bias in float32 (the rows `ids` only, when given):
        the weights themselves for a float32 model, else a float32 copy made once (vocab x d_model x 4
        bytes, on the weight's device) when the whole is asked for, or of the rows asked for."""
        weight = self.unembed.weight
        bias = getattr(self.unembed, "bias", None)
        if weight.dtype != torch.float32:
            if ids is not None and "unembed_float32" not in self.extra:  # a few rows: no whole copy
                return weight[ids].float(), None if bias is None else bias[ids].float()
            if "unembed_float32" not in self.extra:
                self.extra["unembed_float32"] = (
                    weight.detach().float(),
                    None if bias is None else bias.detach().float(),
                )
            weight, bias = self.extra["unembed_float32"]
        return (weight, bias) if ids is None else (weight[ids], None if bias is None else bias[ids])

    @property
    def text_config(self):
        cfg = self.model.config
        return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg

    @property
    def attention_window(self) -> tuple[int | None, bool]:
        """(the sliding window of the layers that have one or None, whether every layer has it), as the
        model's own forward builds its masks: the config's `layer_types` where it has them (Gemma 2/3,
        Qwen 2/3), else one window for every layer where `sliding_window` is set (Mistral, Phi-3).
        A query at position i then sees keys at positions j > i - window."""
        cfg = self.text_config
        window = getattr(cfg, "sliding_window", None)
        kinds = getattr(cfg, "layer_types", None)
        if kinds is None:
            return (int(window), True) if window else (None, False)
        unknown = set(kinds) - {"full_attention", "sliding_attention"}
        if unknown:
            raise ModelError(
                f"layer types {sorted(unknown)} of this {cfg.model_type} model are not attention lexprobe "
                "can mask (full_attention, sliding_attention)"
            )
        if "sliding_attention" not in kinds or not window:
            return None, False
        return int(window), set(kinds) == {"sliding_attention"}

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
            "dtype": dtype_name(self.dtype),
            "dtype_reason": self.extra.get("dtype_reason", ""),
            "device": str(self.device),
            **({"device_map": self.extra["device_map"]} if "device_map" in self.extra else {}),
            "load_seconds": round(self.load_seconds, 2),
        }


def architecture(model_type: str) -> Arch:
    if model_type not in ARCHITECTURES:
        raise ModelError(
            f"model type '{model_type}' is not in lexprobe's architecture table (toolkit/models/architectures.py "
            f"ARCHITECTURES: {', '.join(sorted(ARCHITECTURES))}): add a row for it"
        )
    return ARCHITECTURES[model_type]


def wrap_model(
    model, tokenizer, spec: str, source: str, sha: str, device: torch.device | None
) -> LoadedModel:
    """A loaded `*ForCausalLM` and its tokenizer as a LoadedModel on `device`, frozen and in eval mode.
    Its dtype is the weights' own; its architecture row must be in ARCHITECTURES. `device` None: the
    model is spread over devices already (`toolkit.models.placement`), and its inputs go where its
    embedding is."""
    arch = architecture(model.config.model_type)
    extra = {}
    if device is None:  # inputs go where the embedding is; provenance counts map entries per device
        device = model.get_submodule(arch.embed).weight.device
        if device.type == "meta":
            raise ModelError(
                f"{arch.embed} is offloaded in this model's device map: lexprobe reads it outside forward "
                "passes; keep it, the final norm and the unembedding on a device"
            )
        extra["device_map"] = {}
        for d in model.hf_device_map.values():
            name = f"cuda:{d}" if isinstance(d, int) else str(d)
            extra["device_map"][name] = extra["device_map"].get(name, 0) + 1
    else:
        model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dtype = next(model.parameters()).dtype
    return LoadedModel(model, tokenizer, spec, source, sha, dtype, device, arch, extra=extra)


def state_dict_sha256(model) -> str:
    """sha256 over a model's parameters and buffers (names, dtypes and raw bytes, in name order): the
    weights' identity when they come from no file (a model built or loaded by the caller)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{flat.dtype}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
