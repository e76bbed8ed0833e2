"""`tiny-random`: a seeded, randomly initialised Qwen2-architecture chat LM built in code.

Two layers, d_model 64, a byte-level BPE tokenizer trained in code on the bundled calibration
instructions, and a ChatML template that inserts a default system prompt (like Qwen's), so every code
path of the real default model is exercised in unit tests with no download.
"""

from __future__ import annotations

import json

import torch

from lexprobe import prompts
from lexprobe.toolkit.models.architectures import state_dict_sha256

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (loop.first and message['role'] == 'system') %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _corpus() -> list[str]:
    lines = []
    for name in ("harmful", "harmless"):
        rows = json.loads(prompts.path(f"calibration_{name}_train.json").read_text())
        lines += [r["instruction"] for r in rows]
    lines += json.loads(prompts.path("refusal_phrases.json").read_text())["prefixes"]
    lines += ["I'm sorry, but I can't help with that.", "Sure! Here is how to do it.", "Certainly."]
    return lines


def build_tokenizer(vocab_size: int = 800):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=512
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


# Small settings per model type, on top of the shared ones in `tiny_config`. Post-logit settings are
# set so they change the logits (soft-capping near the logits' scale, a scale far from 1), and sliding
# windows so short that a chat prompt reaches past them (one sliding and one full layer where the
# model mixes them, as Gemma 2/3 do).
_MIXED = {"sliding_window": 8, "layer_types": ["sliding_attention", "full_attention"]}
_TINY_EXTRA: dict[str, dict] = {
    "gemma": {"head_dim": 16},
    "gemma2": {"head_dim": 16, "final_logit_softcapping": 2.0, "query_pre_attn_scalar": 16, **_MIXED},
    "gemma3_text": {"head_dim": 16, "final_logit_softcapping": 2.0, "query_pre_attn_scalar": 16, **_MIXED},
    "mistral": {"sliding_window": 8},
    "granite": {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "residual_multiplier": 0.5},
    "cohere": {"logit_scale": 0.25},
    "qwen3": {"head_dim": 16},
    "phi3": {"pad_token_id": 0, "sliding_window": 8},
}


def tiny_config(model_type: str, vocab_size: int, pad_token_id: int, eos_token_id: int):
    """A 2-layer, d_model 64 config of `model_type` (any row of lexprobe.toolkit.models.architectures.ARCHITECTURES)."""
    from transformers import AutoConfig

    if model_type == "gpt2":
        return AutoConfig.for_model(
            "gpt2",
            vocab_size=vocab_size,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=512,
            initializer_range=0.2,
            eos_token_id=eos_token_id,
            bos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
        )
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "initializer_range": 0.2,
        "tie_word_embeddings": False,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        **_TINY_EXTRA.get(model_type, {}),
    }
    if model_type == "gemma3":  # the multimodal wrapper: a text config plus a tiny vision tower
        vision = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
            "patch_size": 14,
        }
        return AutoConfig.for_model(
            "gemma3",
            text_config={**text, **_TINY_EXTRA["gemma3_text"]},
            vision_config=vision,
            mm_tokens_per_image=4,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
            tie_word_embeddings=False,
        )
    return AutoConfig.for_model(model_type, **text)


def build_tiny_model(seed: int = 0, model_type: str = "qwen2"):
    """(model, tokenizer, sha256 of the weights) of a random `model_type`; deterministic for a seed."""
    from transformers import AutoModelForCausalLM

    tokenizer = build_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = tiny_config(model_type, len(tokenizer), tokenizer.pad_token_id, eos)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer, state_dict_sha256(model)  # what Probe.from_hf would record for it
