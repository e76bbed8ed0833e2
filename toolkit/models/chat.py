"""Chat formatting under a system-prompt condition, with the character span of the user's text.

The model's own chat template (or the one given with --chat-template, `toolkit.models.templates`) is
rendered once per condition with sentinel strings in place of the
system and user texts; the rendered string is cut at the sentinels into template pieces. A prompt is
then the template pieces (tokenized with special tokens) around the system text and the user text
(each tokenized as *literal* text: `<|im_start|>` typed by a user is never a special token). Every
token therefore belongs to exactly one piece, and user tokens carry character offsets into the user
text, which is what attribution and word alignment need.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import logging
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from lexprobe import prompts
from lexprobe.toolkit.errors import InputError, ModelError, did_you_mean

SENT_SYSTEM = "\ue000LEXPROBE_SYSTEM\ue001"
SENT_USER = "\ue000LEXPROBE_USER\ue001"
# A user text a template must place as it is (case, quotes, ampersand, digits): templates that filter
# the content (`| upper`, escaping) render the sentinel unchanged but a real prompt otherwise
PROBE_USER = "Lexprobe check: Mixed case, 'quotes' & 12 signs?"
TEMPLATE, SYSTEM, USER = "template", "system", "user"
log = logging.getLogger(__name__)


def system_presets() -> dict[str, dict]:
    return json.loads(prompts.path("system_prompts.json").read_text())


@dataclass(frozen=True)
class SystemPrompt:
    """A system-prompt condition: `none`, `model-default`, a preset, or custom text."""

    name: str  # none | model-default | <preset> | custom
    text: str | None = None

    @classmethod
    def parse(cls, value: str | None) -> SystemPrompt:
        """`none`, `model-default`, a preset name, `@path/to/file.txt`, or literal text (with a space)."""
        value = "model-default" if value is None else value
        presets = system_presets()
        if value in ("none", "model-default"):
            return cls(value)
        if value in presets:
            return cls(value, presets[value]["text"])
        if value.startswith("@"):
            path = Path(value[1:]).expanduser()
            try:
                text = path.read_text(encoding="utf-8").strip()
            except FileNotFoundError:
                raise InputError(
                    f"system prompt file '{path}' does not exist: check the path after '@'"
                ) from None
            except UnicodeDecodeError:
                raise InputError(
                    f"system prompt file '{path}' is not UTF-8 text: re-save it as UTF-8"
                ) from None
            except OSError as err:  # a directory, no permission
                raise InputError(f"cannot read system prompt file '{path}': {err.strerror or err}") from err
            if not text:
                raise InputError(
                    f"system prompt file '{path}' is empty: use --system-prompt none for no system turn"
                )
            return cls("custom", text)
        if not value.strip():
            raise InputError("--system-prompt is empty: use 'none' for no system turn")
        if " " not in value.strip():
            choices = ["none", "model-default", *presets]
            hint = did_you_mean(value, choices, quote="'")
            raise InputError(
                f"unknown system prompt preset '{value}': {hint}use one of {', '.join(choices)}, "
                "'@file.txt', or custom text with spaces"
            )
        return cls("custom", value)

    def describe(self) -> dict:
        return {"name": self.name, "text": self.text}


@dataclass
class ChatPrompt:
    """One formatted prompt. Offsets are character positions in `text`."""

    text: str
    user_text: str
    user_span: tuple[int, int]
    input_ids: list[int]
    token_spans: list[tuple[int, int]]
    token_kinds: list[str]
    prefix_len: int  # leading tokens shared by every prompt of this condition (template head + system)

    @cached_property
    def user_token_indices(self) -> list[int]:
        return [i for i, kind in enumerate(self.token_kinds) if kind == USER]

    def user_token_spans(self) -> list[tuple[int, int]]:
        """Spans of the user tokens relative to the start of the user text."""
        start = self.user_span[0]
        return [
            (self.token_spans[i][0] - start, self.token_spans[i][1] - start) for i in self.user_token_indices
        ]


class ChatFormat:
    """Formats user texts for one tokenizer and one system-prompt condition, with the model's own chat
    template or `template` (a `toolkit.models.templates.ChatTemplate`)."""

    def __init__(self, tokenizer, system: SystemPrompt, template=None):
        from lexprobe.toolkit.models.templates import names, warn_unknown_markers

        self.tokenizer = tokenizer
        self.system = system
        self.template = template
        if template is None and getattr(tokenizer, "chat_template", None) is None:
            raise ModelError(
                "this model has no chat template: give one with --chat-template (a family: "
                f"{names()}, where none is the raw prompt of a base model; or a Jinja file)"
            )
        # none | model-default | "system turn" | "merged into the user turn" | "above the user text"
        self.placement = system.name
        which = self._which()
        try:
            self.pieces = self._template_pieces()  # [(kind, text)], with USER text left empty
            self._check_user_text()
        except _TemplateRefused as err:
            raise ModelError(
                f"{which} cannot render one user message ({err}): give another with --chat-template"
            ) from None
        except ModelError as err:
            raise ModelError(f"{which}: {err}") from None
        if template is not None:
            warn_unknown_markers(template, tokenizer, "".join(t for _, t in self.pieces))
        user_at = [k for k, _ in self.pieces].index(USER)
        self._head = [self._tokenize(k, t) for k, t in self.pieces[:user_at]]
        self._tail = [self._tokenize(k, t) for k, t in self.pieces[user_at + 1 :]]
        self.prefix_ids = [i for ids, _, _ in self._head for i in ids]

    # ------------------------------------------------------------------ template analysis
    def _render(self, messages: list[dict]) -> str:
        given = {} if self.template is None else {"chat_template": self.template.text}
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True, **given
            )
        except Exception as err:  # noqa: BLE001 - jinja raises whatever the template raises
            raise _TemplateRefused(str(err)) from err

    def describe(self) -> dict:
        """The condition prompts are formatted under: the system prompt, and the template where one was
        given (a model's own is part of the model); the key of readouts, directions and thresholds."""
        out = self.system.describe()
        return out if self.template is None else {**out, "chat_template": self.template.record()}

    def template_record(self) -> dict:
        """The template's name and sha256, for run.json."""
        if self.template is not None:
            return self.template.record()
        own = self.tokenizer.chat_template
        text = own if isinstance(own, str) else json.dumps(own, sort_keys=True)
        return {"name": "the model's own", "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}

    def _template_pieces(self) -> list[tuple[str, str]]:
        cond = self.system
        if cond.name == "model-default":
            return _split(self._render([{"role": "user", "content": SENT_USER}]))
        if cond.name == "none":
            return _split(self._render_without_system())
        try:
            rendered = self._render(
                [{"role": "system", "content": SENT_SYSTEM}, {"role": "user", "content": SENT_USER}]
            )
            if not _system_before_user(rendered):
                log.warning(
                    "%s does not place a system message once, before the user's: the system prompt is "
                    "merged into the user turn",
                    self._which(),
                )
                raise _TemplateRefused("misplaced system message")
            self.placement = "above the user text" if self._raw() else "system turn"
        except _TemplateRefused:  # no system role (e.g. Gemma): put the system text atop the user turn
            rendered = self._render([{"role": "user", "content": SENT_SYSTEM + "\n\n" + SENT_USER}])
            self.placement = "merged into the user turn"
        return [(k, cond.text if k == SYSTEM else t) for k, t in _split(rendered)]

    def _which(self) -> str:
        return (
            "this model's chat template" if self.template is None else f"chat template '{self.template.name}'"
        )

    def _raw(self) -> bool:
        return self.template is not None and self.template.name == "none"

    def _check_user_text(self) -> None:
        """ModelError unless a real user text comes out of the template as it went in, once."""
        if self._render([{"role": "user", "content": PROBE_USER}]).count(PROBE_USER) != 1:
            raise ModelError(
                "it does not place the user message verbatim, once (it changes the text, e.g. its case): "
                "give another with --chat-template"
            )

    def _render_without_system(self) -> str:
        plain = self._render([{"role": "user", "content": SENT_USER}])
        try:
            with_sys = self._render(
                [{"role": "system", "content": SENT_SYSTEM}, {"role": "user", "content": SENT_USER}]
            )
        except _TemplateRefused:
            return plain  # the template has no system turn at all
        if not _system_before_user(with_sys):
            return plain  # no system turn lexprobe can tell apart
        a, rest = with_sys.split(SENT_SYSTEM)
        b, c = rest.split(SENT_USER)
        if not (plain.startswith(a) and plain.endswith(b + SENT_USER + c)):
            return plain  # no default system turn was inserted
        # The template inserted a default system turn `a + default + b`. Keep only what opens the user
        # turn: the part of `b` from the last occurrence of the turn-opening special token of `a`.
        bos = self.tokenizer.bos_token or ""
        lead = bos if bos and a.startswith(bos) else ""
        opener = next((t for t in self._special_tokens_in(a[len(lead) :])), None)
        if opener is None or opener not in b:
            raise ModelError(
                "cannot remove the default system turn from this model's chat template: use "
                "--system-prompt model-default or give a system prompt"
            )
        return lead + b[b.rindex(opener) :] + SENT_USER + c

    def _special_tokens_in(self, text: str) -> list[str]:
        specials = set(self.tokenizer.all_special_tokens) | set(
            getattr(self.tokenizer, "added_tokens_encoder", {})
        )
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return [t for t in self.tokenizer.convert_ids_to_tokens(ids) if t in specials]

    # ------------------------------------------------------------------ tokenization
    def _tokenize(self, kind: str, text: str) -> tuple[list[int], list[tuple[int, int]], str]:
        if not text:
            return [], [], kind
        enc = self.tokenizer(
            text,
            add_special_tokens=False,
            split_special_tokens=kind != TEMPLATE,
            return_offsets_mapping=True,
        )
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]], kind

    def format(self, user_text: str) -> ChatPrompt:
        segments = [*self._head, self._tokenize(USER, user_text), *self._tail]
        texts = (
            [t for _, t in self.pieces[: len(self._head)]]
            + [user_text]
            + [t for _, t in self.pieces[len(self._head) + 1 :]]
        )
        ids, spans, kinds, pos = [], [], [], 0
        for (seg_ids, seg_offsets, kind), text in zip(segments, texts):
            ids += seg_ids
            spans += [(pos + s, pos + e) for s, e in seg_offsets]
            kinds += [kind] * len(seg_ids)
            pos += len(text)
        head_chars = sum(len(t) for _, t in self.pieces[: len(self._head)])
        return ChatPrompt(
            text="".join(texts),
            user_text=user_text,
            user_span=(head_chars, head_chars + len(user_text)),
            input_ids=ids,
            token_spans=spans,
            token_kinds=kinds,
            prefix_len=len(self.prefix_ids),
        )


class _TemplateRefused(Exception):
    pass


def _system_before_user(rendered: str) -> bool:
    """Whether a rendering holds the system sentinel once, before the one user sentinel."""
    return (
        rendered.count(SENT_SYSTEM) == 1
        and rendered.count(SENT_USER) == 1
        and rendered.index(SENT_SYSTEM) < rendered.index(SENT_USER)
    )


def _split(rendered: str) -> list[tuple[str, str]]:
    """Cut a rendering at the sentinels into (kind, text) pieces; the user piece's text is empty."""
    if rendered.count(SENT_USER) != 1:
        raise ModelError(
            "it does not place the user message verbatim, once: give another with --chat-template"
        )
    pieces: list[tuple[str, str]] = []
    before_user, after_user = rendered.split(SENT_USER)
    if SENT_SYSTEM in before_user:
        a, b = before_user.split(SENT_SYSTEM)
        pieces += [(TEMPLATE, a), (SYSTEM, SENT_SYSTEM), (TEMPLATE, b)]
    else:
        pieces.append((TEMPLATE, before_user))
    pieces += [(USER, ""), (TEMPLATE, after_user)]
    return [(k, t) for k, t in pieces if t or k == USER]


# ---------------------------------------------------------------------- token <-> word alignment
def token_word_weights(
    token_spans: list[tuple[int, int]], word_spans: list[tuple[int, int]], text: str
) -> np.ndarray:
    """[n_tokens, n_words] alignment: the share of each token's non-space characters in each word.

    A row sums to 1 when the token overlaps any word, else 0 (whitespace-only tokens, or characters
    outside all words). Tokens and words may cut a text differently (BPE "don" + "'t" vs spaCy "do" +
    "n't"); sharing by character overlap means every word with characters gets some token mass.
    Spans are character offsets into `text`; words must be sorted and non-overlapping.
    """
    weights = np.zeros((len(token_spans), len(word_spans)))
    starts = [s for s, _ in word_spans]
    for i, (s, e) in enumerate(token_spans):
        while s < e and text[s].isspace():
            s += 1
        while e > s and text[e - 1].isspace():
            e -= 1
        j = max(bisect.bisect_right(starts, s) - 1, 0)
        while j < len(word_spans) and word_spans[j][0] < e:
            weights[i, j] = max(0, min(e, word_spans[j][1]) - max(s, word_spans[j][0]))
            j += 1
        total = weights[i].sum()
        if total:
            weights[i] /= total
    return weights
