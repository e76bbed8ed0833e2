"""Word features of a user text: spaCy segmentation with character offsets, optional phrase grouping,
lemmas, token -> word aggregation, and the text with some words removed (for perturbations).

A *word* is a non-space spaCy token (punctuation included: the margin may hinge on a "?" too).
With `group_phrases=True` a verb and its particle ("blow up", "wipe out") become one feature when the
particle directly follows the verb (only whitespace between), so the feature is one contiguous span.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from lexprobe.toolkit.models.chat import token_word_weights
from lexprobe.toolkit.models.language import nlp


@dataclass(frozen=True)
class Word:
    index: int
    text: str
    start: int  # character offsets into the user text, end exclusive
    end: int
    lemmas: tuple[str, ...]  # lower-cased lemma of each spaCy token in the word
    is_punct: bool = False


def segment(text: str, group_phrases: bool = False) -> list[Word]:
    """The words of `text`, in order, with character offsets (code points of the Python string)."""
    doc = nlp()(text)
    tokens = [t for t in doc if not t.is_space]
    groups: list[list] = []
    for tok in tokens:
        prev = groups[-1][-1] if groups else None
        attach = (
            group_phrases
            and prev is not None
            and tok.dep_ == "prt"
            and tok.head.i == prev.i
            and not text[prev.idx + len(prev.text) : tok.idx].strip()
        )
        if attach:
            groups[-1].append(tok)
        else:
            groups.append([tok])
    words = []
    for i, group in enumerate(groups):
        start, end = group[0].idx, group[-1].idx + len(group[-1].text)
        words.append(
            Word(
                index=i,
                text=text[start:end],
                start=start,
                end=end,
                lemmas=tuple(t.lemma_.lower() for t in group),
                is_punct=all(t.is_punct for t in group),
            )
        )
    return words


def content_lemmas(phrase: str) -> set[str]:
    """Lower-cased lemmas of a phrase's content words (all its words if every one is a stop word)."""
    doc = nlp()(phrase.strip())
    words = [t for t in doc if not (t.is_space or t.is_punct)]
    content = [t for t in words if not t.is_stop] or words
    return {t.lemma_.lower() for t in content} | {t.text.lower() for t in content}


def matches(word: Word, lemmas: set[str]) -> bool:
    """True when one of the word's lemmas (or its surface form) is among `lemmas`."""
    return bool(({*word.lemmas, word.text.lower()}) & lemmas)


def word_weights(token_spans: list[tuple[int, int]], words: list[Word], text: str) -> np.ndarray:
    """[n_tokens, n_words] character-overlap alignment of user tokens to words (rows sum to 1 or 0)."""
    return token_word_weights(token_spans, [(w.start, w.end) for w in words], text)


def to_words(token_scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[n_tokens] token attributions -> [n_words]: each token's score shared by character overlap."""
    return np.asarray(token_scores, dtype=float) @ weights


def remove_words(text: str, words: list[Word], keep: np.ndarray, replacement: str | None = None) -> str:
    """`text` with the words where `keep` is False deleted (or replaced by `replacement`), keeping every
    other character; runs of spaces left behind collapse to one space."""
    if all(keep):
        return text
    parts, pos = [], 0
    for word, kept in zip(words, keep):
        if kept:
            continue
        parts.append(text[pos : word.start])
        if replacement is not None:
            parts.append(replacement)
        pos = word.end
    parts.append(text[pos:])
    return re.sub(r"[ \t]{2,}", " ", "".join(parts)).strip()
