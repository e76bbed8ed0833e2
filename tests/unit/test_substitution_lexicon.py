"""The bundled trigger lexicon against XSTest: coverage, neutrality, and matching in the prompts."""

from __future__ import annotations

import pandas as pd
import pytest

from lexprobe import prompts
from lexprobe.toolkit.models.language import nlp
from lexprobe.toolkit.substitution.lexicon import Lexicon, find_units


@pytest.fixture(scope="module")
def lexicon():
    return Lexicon.load()


@pytest.fixture(scope="module")
def xstest():
    return pd.read_csv(prompts.path("xstest.csv"), dtype=str, keep_default_na=False)


def _norm(s: str) -> str:
    return " ".join(s.strip().lower().split())


def test_every_xstest_focus_word_is_in_the_lexicon(lexicon, xstest):
    """By key, by an entry's `focus` alias, or by the matcher itself (plurals: 'Christians')."""
    covered = set(lexicon.entries) | {_norm(f) for e in lexicon.entries.values() for f in e.focus}
    focus = {f.strip() for f in xstest["focus"] if f.strip()}
    missing = [
        f
        for f in focus
        if _norm(f) not in covered and not any(u.trigger for u in find_units(nlp()(f), lexicon))
    ]
    assert sorted(missing) == []


def test_substitutes_are_neutral_and_well_formed(lexicon):
    keys = set(lexicon.entries)
    for entry in lexicon.entries.values():
        assert entry.category in {"violence", "drugs", "crime", "group", "privacy"}, entry.key
        assert entry.senses or entry.note, f"{entry.key}: an entry without substitutes says why"
        for sense in entry.senses:
            assert sense.pos in ("VERB", "NOUN", "ADJ", "ADV") and sense.substitutes, entry.key
            for sub in sense.substitutes:
                assert _norm(sub) not in keys, f"{entry.key} -> {sub}: a substitute is itself a trigger"
                assert ("*" in sub) == ("*" in entry.key) or "*" not in sub, entry.key


def test_focus_triggers_with_substitutes_are_found_in_their_safe_prompts(lexicon, xstest):
    """Each safe prompt whose focus has a neutral paraphrase yields a trigger unit with substitutes."""
    by_focus = {}
    for entry in lexicon.entries.values():
        for f in (entry.key, *entry.focus):
            by_focus[_norm(f)] = entry
    safe = xstest[(xstest["label"] == "safe") & (xstest["focus"].str.strip() != "")]
    missed = []
    for _, row in safe.iterrows():
        entry = by_focus.get(_norm(row["focus"]))
        if entry is None or not entry.senses:  # groups (matched as plurals) have no substitutes
            continue
        if any(w[:4].lower() not in row["prompt"].lower() for w in row["focus"].split()):
            continue  # privacy prompts name a category, not a word of the prompt
        units = find_units(nlp()(row["prompt"]), lexicon)
        if not any(u.trigger and lexicon.entries[u.key].substitutes(u.pos) for u in units):
            missed.append((row["id"], row["prompt"]))
    # spaCy tags "disable" (id 120) as an adjective and the drug "crack" (219) as a verb
    assert len(missed) <= 2, missed


def test_lexicon_about_says_how_it_was_made(lexicon):
    assert "XSTest" in lexicon.about and "by hand" in lexicon.about


def test_xstest_pair_map(xstest):
    pairs = pd.read_csv(prompts.path("xstest_pairs.csv"), dtype=str)
    by_id = xstest.set_index("id")
    assert not pairs["safe_id"].duplicated().any() and len(pairs) == 221
    for _, r in pairs.iterrows():
        safe, unsafe = by_id.loc[r["safe_id"]], by_id.loc[r["unsafe_id"]]
        assert safe["label"] == "safe" and unsafe["label"] == "unsafe"
        if r["pairing"] == "i+25":
            assert int(r["unsafe_id"]) == int(r["safe_id"]) + 25
            if (
                safe["focus"].strip() and r["safe_id"] != "174"
            ):  # 174/199: "bank account fraud" vs "bank fraud"
                assert _norm(safe["focus"]) == _norm(unsafe["focus"])
    assert set(pairs["safe_type"]) == set(xstest[xstest["label"] == "safe"]["type"]) - {"privacy_public"}
