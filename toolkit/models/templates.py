"""Chat templates for models whose files carry none (a base model, a GGUF converted without one, an HF
folder whose tokenizer_config lost it), or to study a model under another family's template.

`--chat-template NAME|FILE|none` (and `lexprobe.load(..., chat_template=...)`): NAME is a family below
(`lexprobe templates` lists them), FILE a Jinja file as transformers reads a `chat_template.jinja`,
`none` the raw prompt (the user text alone after the tokenizer's BOS, a system prompt as a paragraph
above it) for a base model. A model's own template is used unless the flag is given. A template is
checked as a model's own is (`toolkit.models.chat.ChatFormat`): it must place the user message
verbatim, once; a family without a system role refuses one and the system text goes atop the user
turn. The families are written from each model family's published template, reduced to the single
user turn (and system turn) lexprobe renders.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from lexprobe.toolkit.errors import InputError, did_you_mean

log = logging.getLogger(__name__)

NO_SYSTEM = "{{ raise_exception('this family has no system role') }}"
BOS = "{% if bos_token is defined and bos_token %}{{ bos_token }}{% endif %}"  # a tokenizer may have none
EOS = "(eos_token if eos_token is defined and eos_token else '')"
FAMILIES: dict[str, tuple[str, str]] = {  # name: (what it is, the Jinja template)
    "chatml": (
        "<|im_start|>role ... <|im_end|> turns: Qwen, SmolLM2, Hermes, many fine-tunes",
        "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}",
    ),
    "llama-2": (
        "[INST] <<SYS>> ... <</SYS>> ... [/INST]: Llama 2 chat",
        "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set messages = messages[1:] %}{% else %}{% set system = none %}{% endif %}"
        "{% for message in messages %}{% if message['role'] == 'user' %}" + BOS + "{{ '[INST] ' }}"
        "{% if loop.first and system is not none %}{{ '<<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}{% endif %}"
        "{{ message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + " + EOS + " }}"
        "{% endif %}{% endfor %}",
    ),
    "llama-3": (
        "<|start_header_id|>role<|end_header_id|> ... <|eot_id|>: Llama 3, 3.1, 3.2",
        BOS + "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
        "'<|end_header_id|>\\n\\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}",
    ),
    "mistral": (
        "[INST] ... [/INST], no system role: Mistral and Mixtral instruct",
        BOS
        + "{% for message in messages %}{% if message['role'] == 'system' %}"
        + NO_SYSTEM
        + "{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ message['content'] + " + EOS + " }}{% endif %}{% endfor %}",
    ),
    "gemma": (
        "<start_of_turn>user ... <end_of_turn>, no system role: Gemma 1, 2 and 3",
        BOS
        + "{% for message in messages %}{% if message['role'] == 'system' %}"
        + NO_SYSTEM
        + "{% endif %}{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else message['role'])"
        " + '\\n' + message['content'] + '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}",
    ),
    "phi-3": (
        "<|user|> ... <|end|>: Phi-3 and Phi-3.5",
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    ),
    "zephyr": (
        "<|user|> ... </s>: Zephyr, TinyLlama chat, SmolLM (v1)",
        "{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] + "
        + EOS
        + " + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
    ),
    "none": (
        "no template: the raw prompt after the BOS token (a base model); a system prompt is a paragraph above it",
        BOS + "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% else %}{{ message['content'] }}"
        "{% endif %}{% endfor %}",
    ),
}
ALIASES = {
    "qwen": "chatml",
    "smollm": "chatml",
    "llama2": "llama-2",
    "llama3": "llama-3",
    "phi3": "phi-3",
    "raw": "none",
}
MAX_BYTES = 1 << 20  # a template file larger than this is not one


@dataclass(frozen=True)
class ChatTemplate:
    """A template given with --chat-template: its name (a family, or the file it came from) and text."""

    name: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def record(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}


def names() -> str:
    return ", ".join(FAMILIES)


def resolve_template(value) -> ChatTemplate | None:
    """The template `value` names: None (or "") for the model's own, a `ChatTemplate` as it is, a family
    name or alias, `none`, or a Jinja file. InputError for anything else, naming the families."""
    if value is None or isinstance(value, ChatTemplate):
        return value
    text = str(value).strip()
    if not text:
        return None
    family = ALIASES.get(text.lower(), text.lower())
    if family in FAMILIES:
        return ChatTemplate(family, FAMILIES[family][1])
    path = Path(text).expanduser()
    if not path.exists():
        hint = did_you_mean(text.lower(), [*FAMILIES, *ALIASES], quote="'")
        raise InputError(
            f"--chat-template '{value}' is neither a family ({names()}) nor an existing file: "
            f"{hint}see `lexprobe templates`"
        )
    if not path.is_file() or path.stat().st_size > MAX_BYTES:
        raise InputError(f"--chat-template '{value}' is not a template file (a folder, or over 1 MB)")
    try:
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"--chat-template '{value}' cannot be read as UTF-8 text ({err})") from None
    check_jinja(source, f"--chat-template '{value}'")
    return ChatTemplate(str(path), source)


def template_for(lm, given=None) -> ChatTemplate | None:
    """The template `lm`'s prompts are formatted with: `given` where one is, else the family an embedded
    model whose file has none names (`lm.extra["default_template"]`, set by the loader), else None (the
    model's own)."""
    if given not in (None, ""):
        return resolve_template(given)
    default = lm.extra.get("default_template")
    if default:
        log.info("%s has no chat template: using the %s family (--chat-template to change)", lm.spec, default)
    return resolve_template(default)


def check_jinja(source: str, where: str) -> None:
    """InputError unless `source` is a Jinja template that renders `messages` (as transformers reads one)."""
    from jinja2 import TemplateSyntaxError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(source)
    except TemplateSyntaxError as err:
        raise InputError(f"{where} is not a Jinja template: line {err.lineno}: {err.message}") from None
    if "messages" not in source:
        raise InputError(f"{where} is not a chat template: it never reads `messages`")


MARKER = re.compile(r"<\|[^<>|\s]+\|>|<start_of_turn>|<end_of_turn>|\[/?INST\]|<</?SYS>>")


def warn_unknown_markers(template: ChatTemplate, tokenizer, rendered: str) -> None:
    """A family's turn markers that this tokenizer cuts into several pieces were likely never seen in
    training: say so (the template still works, as text)."""
    split = sorted(
        {m for m in MARKER.findall(rendered) if len(tokenizer(m, add_special_tokens=False).input_ids) > 1}
    )
    if split:
        log.warning(
            "chat template '%s': this tokenizer has no token for %s, so the model was likely not trained "
            "on this template; its margins describe the model under a format it does not know",
            template.name,
            ", ".join(split),
        )
