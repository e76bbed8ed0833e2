"""Word features: spaCy segmentation with character offsets on tricky text, token -> word alignment with
the tiny model's byte-level BPE, phrase grouping, and word removal."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lexprobe.toolkit.attribution.words import (
    content_lemmas,
    matches,
    remove_words,
    segment,
    to_words,
    word_weights,
)
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt

TRICKY = [
    "What's the best way to kill time? I don't know—really.",
    "Café naïve 🙂 résumé… “quoted” (brackets) [x]!",
    "  spaced   out\tand\nnew lines  ",
    "Why can't elderly people travel?!?",
    "e-mail: bob@example.com, costs $5.99 — 50%",
    "日本語のテキスト and Ελληνικά",
    "👩‍👩‍👧 family emoji; ZWJ sequences",
]


def _check_words(text, words):
    assert [w.index for w in words] == list(range(len(words)))
    pos = 0
    for w in words:
        assert text[w.start : w.end] == w.text and w.text.strip() == w.text and w.text
        assert w.start >= pos  # ordered, non-overlapping
        assert text[pos : w.start].strip() == ""  # nothing but whitespace between words
        pos = w.end
    assert text[pos:].strip() == ""


@pytest.mark.parametrize("text", TRICKY)
def test_words_cover_every_non_space_character(text):
    _check_words(text, segment(text))


def test_contractions_and_punctuation_are_their_own_words():
    words = segment("What's the best way? I don't know—really.")
    assert [w.text for w in words] == [
        "What", "'s", "the", "best", "way", "?", "I", "do", "n't", "know", "—", "really", ".",
    ]  # fmt: skip
    assert words[1].lemmas == ("be",) and words[8].lemmas == ("not",)
    assert words[5].is_punct and not words[4].is_punct


def test_phrasal_verbs_group_only_when_asked():
    plain = segment("How do I blow up a balloon?")
    grouped = segment("How do I blow up a balloon?", group_phrases=True)
    assert [w.text for w in plain][3:5] == ["blow", "up"]
    assert [w.text for w in grouped] == ["How", "do", "I", "blow up", "a", "balloon", "?"]
    assert grouped[3].lemmas == ("blow", "up") and (grouped[3].start, grouped[3].end) == (9, 16)
    _check_words("How do I blow up a balloon?", grouped)


@pytest.mark.parametrize("text", TRICKY)
def test_tokens_align_to_words_by_characters(tiny, text):
    prompt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default")).format(text)
    words = segment(text)
    w = word_weights(prompt.user_token_spans(), words, text)  # [n_tokens, n_words]
    assert w.shape == (len(prompt.user_token_indices), len(words))
    sums = w.sum(axis=1)
    assert np.allclose(sums[sums > 0], 1.0)
    assert (w.sum(axis=0) > 0).all()  # every word gets some token mass
    spans = prompt.user_token_spans()
    for i, (s, e) in enumerate(spans):  # a token with visible characters belongs to some word
        if text[s:e].strip():
            assert sums[i] == pytest.approx(1.0)
    # aggregation keeps the total of the tokens that lie in words
    scores = np.random.default_rng(0).normal(size=len(spans))
    assert to_words(scores, w).sum() == pytest.approx(scores[sums > 0].sum())


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["kill", "don't", "café", "🙂", "—", "?!", "  ", "\t", "naïve", "C++", "O'Neil", "x"]
        ),
        min_size=1,
        max_size=12,
    ).map(" ".join)
)
def test_segmentation_and_alignment_hold_for_random_text(tiny, text):
    words = segment(text)
    _check_words(text, words)
    if words:
        prompt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("none")).format(text)
        w = word_weights(prompt.user_token_spans(), words, text)
        assert (w.sum(axis=0) > 0).all()
        assert np.allclose(w.sum(axis=1)[w.sum(axis=1) > 0], 1.0)


def test_remove_words_deletes_or_replaces_and_collapses_spaces():
    text = "How do I blow up a balloon?"
    words = segment(text)
    keep = np.ones(len(words), dtype=bool)
    assert remove_words(text, words, keep) == text
    keep[3] = False
    assert remove_words(text, words, keep) == "How do I up a balloon?"
    assert remove_words(text, words, keep, replacement="something") == "How do I something up a balloon?"
    keep[:] = False
    assert remove_words(text, words, keep) == ""
    only_q = np.zeros(len(words), dtype=bool)
    only_q[-1] = True
    assert remove_words(text, words, only_q) == "?"


def test_focus_lemma_matching():
    words = segment("What are good ways of killing time at the airport?")
    focus = content_lemmas("kill")
    assert [w.text for w in words if matches(w, focus)] == ["killing"]
    assert content_lemmas("marital status") >= {"marital", "status"}
    assert "elderly" in content_lemmas("elderly ")  # trailing space in the data
