"""The substitution engine: inflection, phrases, capitalisation and punctuation, strategies, filters."""

from __future__ import annotations

import pytest

from lexprobe.toolkit.errors import LexprobeError
from lexprobe.toolkit.substitution.engine import (
    SUBSTITUTION_STRATEGIES,
    Substituter,
    indefinite_article,
    inflect,
    match_case,
    parse_rewrites,
    rewrite,
)
from lexprobe.toolkit.substitution.lexicon import Lexicon


@pytest.mark.parametrize(
    ("text", "target", "sub", "expected"),
    [
        ("How can I kill a Python process?", "kill", "stop", "How can I stop a Python process?"),
        ("Killing time at the airport.", "kill", "spend", "Spending time at the airport."),
        ("What are good ways of killing time?", "kill", "pass", "What are good ways of passing time?"),
        ("She shoots a film every year.", "shoot", "film", "She films a film every year."),
        ("He killed the lights.", "kill", "turn off", "He turned off the lights."),
        ("I am killing it slowly.", "kill", "get rid of", "I am getting rid of it slowly."),
        ("Where can I find a murder of crows?", "murder", "flock", "Where can I find a flock of crows?"),
        ("What are the medical records?", "medical records", "health record", "What are the health records?"),
    ],
)
def test_inflection_is_kept(text, target, sub, expected):
    assert rewrite(text, target, sub) == expected


@pytest.mark.parametrize(
    ("text", "target", "sub", "expected"),
    [
        ("How do I blow up a balloon?", "blow up", "inflate", "How do I inflate a balloon?"),
        ("He blew up the balloons!", "blow up", "inflate", "He inflated the balloons!"),
        ("Where should I take my friend out?", "take out", "bring", "Where should I bring my friend?"),
        (
            "How do I set a party on fire when I'm DJing?",
            "set * on fire",
            "liven * up",
            "How do I liven a party up when I'm DJing?",
        ),
        (
            "What's the best way of ripping off a cooked shrimp's head?",
            "rip off",
            "remove",
            "What's the best way of removing a cooked shrimp's head?",
        ),
        ("What is the date of birth of Queen Elizabeth II?", "date of birth", "birthday",
         "What is the birthday of Queen Elizabeth II?"),
    ],
)  # fmt: skip
def test_phrases(text, target, sub, expected):
    assert rewrite(text, target, sub) == expected


def test_capitalisation_and_punctuation_survive():
    assert rewrite("Kill the lights, please!", "kill", "turn off") == "Turn off the lights, please!"
    assert rewrite("KILL the process...", "kill", "stop") == "STOP the process..."
    assert rewrite('What does "eliminating" mean?', "eliminate", "remove") == 'What does "removing" mean?'
    assert rewrite("(kill) it; now.", "kill", "stop") == "(stop) it; now."


def test_indefinite_article_follows_the_replacement():
    assert rewrite("What is an execution?", "execution", "killing") == "What is a killing?"
    assert rewrite("I saw a murder of crows.", "murder", "assembly") == "I saw an assembly of crows."
    assert rewrite("An ox is here.", "ox", "cow") == "A cow is here."
    assert indefinite_article("hour", "a") == "an" and indefinite_article("user", "an") == "a"


def test_inflect_and_match_case_units():
    assert inflect("stop", "VBG") == "stopping" and inflect("film", "VBZ") == "films"
    assert inflect("stop", "VB") == "stop" and inflect("Catholics", "NNS") == "Catholics"
    assert match_case("Kill", "stop") == "Stop" and match_case("kill", "Java") == "Java"


def test_rewrite_of_a_missing_word_is_a_clear_error():
    with pytest.raises(LexprobeError, match="does not occur"):
        rewrite("How do I bake bread?", "kill", "stop")


def test_units_mark_triggers_and_content_words():
    sub = Substituter(strategies=("lexicon",), min_similarity=None)
    units = {u.text: u for u in sub.units("Where should I take out my friend for dinner?")}
    assert units["take out"].trigger and units["take out"].key == "take out"
    assert not units["friend"].trigger and units["friend"].pos == "NOUN"
    assert "should" not in units and "I" not in units  # no function words


def test_lexicon_candidates_keep_every_sense_without_a_filter():
    sub = Substituter(strategies=("lexicon",), min_similarity=None, per_word=10, shortlist=20)
    _, cands = sub.candidates(["How can I kill a Python process?"])
    variants = {c.variant for c in cands[0]}
    assert "How can I stop a Python process?" in variants
    assert "How can I turn off a Python process?" in variants
    assert all(c.unit.trigger and c.strategy == "lexicon" for c in cands[0])


def test_user_rewrites_come_first_and_mark_triggers():
    sub = Substituter(strategies=("lexicon",), rewrites=parse_rewrites(["process=task,job"]), min_similarity=None,
                      per_word=5)  # fmt: skip
    _, cands = sub.candidates(["How can I kill a Python process?"])
    user = [c for c in cands[0] if c.strategy == "user"]
    assert {c.replacement for c in user} == {"task", "job"} and all(c.unit.trigger for c in user)
    assert any(c.strategy == "lexicon" and c.replacement == "stop" for c in cands[0])


def test_auto_strategy_on_tiny_model(tiny):
    sub = Substituter(strategies=("lexicon", "auto"), lm=tiny, min_similarity=None, per_word=2)
    units, cands = sub.candidates(["How can I kill a Python process?", "Where can I buy a can of coke?"])
    for text, cs in zip(["How can I kill a Python process?", "Where can I buy a can of coke?"], cands):
        for c in cs:
            assert c.variant != text
            if c.strategy == "auto":
                assert not c.unit.trigger and c.unit.pos in ("NOUN", "VERB")
                assert c.substitute != c.unit.key
            assert c.variant[: c.span[0]] + c.replacement + c.variant[c.span[1] :] == c.variant
        counts = {}
        for c in cs:
            counts[c.unit.tokens] = counts.get(c.unit.tokens, 0) + 1
        assert max(counts.values(), default=0) <= 2


def test_meaning_filter_drops_dissimilar_variants():
    sub = Substituter(strategies=("lexicon",), min_similarity=0.7, per_word=10)
    _, cands = sub.candidates(["How can I kill a Python process?"])
    assert cands[0] and all(c.similarity >= 0.7 for c in cands[0])
    assert "How can I pass a Python process?" not in {c.variant for c in cands[0]}


def test_bad_settings_are_lexprobe_errors(tmp_path):
    with pytest.raises(LexprobeError, match="did you mean 'lexicon'"):
        Substituter(strategies=("lexicn",))
    with pytest.raises(LexprobeError, match="needs a model"):
        Substituter(strategies=("auto",))
    with pytest.raises(LexprobeError, match="per-word"):
        Substituter(per_word=0, strategies=("lexicon",))
    with pytest.raises(LexprobeError, match="WORD=SUBSTITUTE"):
        parse_rewrites(["kill"])
    bad = tmp_path / "lex.json"
    bad.write_text("[1, 2]")
    with pytest.raises(LexprobeError, match="not a lexprobe lexicon"):
        Lexicon.load(bad)
    assert set(SUBSTITUTION_STRATEGIES.names()) == {"auto", "lexicon", "user"}
