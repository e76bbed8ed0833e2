"""The trigger lexicon and the word units of a prompt (spaCy parts of speech, lemmas, phrases).

A prompt's *units* are what the substitution engine rewrites: lexicon phrases ("blow up",
"set * on fire", "date of birth") matched first, longest first, then single content words (nouns,
verbs, adjectives, adverbs, proper nouns that are not stop words). A unit whose key is in the lexicon is
a trigger; every other unit is a plain content word (a control candidate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lexprobe import prompts
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.models.language import nlp

CONTENT_POS = ("NOUN", "VERB", "ADJ", "ADV", "PROPN")
GAP = "*"
MAX_GAP = 4  # a '*' in a key spans one to four words
INFLECTED_TAGS = {"VBD", "VBG", "VBN", "VBZ", "NNS", "NNPS", "JJR", "JJS", "RBR", "RBS"}


@dataclass(frozen=True)
class Sense:
    pos: str | None  # the part of speech the sense applies to (None: any)
    sense: str
    substitutes: tuple[str, ...]


@dataclass(frozen=True)
class Entry:
    key: str  # lowercase lemma or lemma phrase; '*' is a gap
    category: str
    senses: tuple[Sense, ...]
    note: str = ""
    focus: tuple[str, ...] = ()  # XSTest focus strings this entry covers besides its key
    display: str = ""  # the key as written in the file ("LSD")

    def substitutes(self, pos: str) -> list[tuple[str, str]]:
        """(substitute, sense) for a unit with this part of speech, in lexicon order, no repeats."""
        out, seen = [], set()
        for s in self.senses:
            if s.pos in (None, pos):
                for sub in s.substitutes:
                    if sub not in seen:
                        seen.add(sub)
                        out.append((sub, s.sense))
        return out


@dataclass
class Lexicon:
    entries: dict[str, Entry]
    source: str
    about: str = ""
    _patterns: dict[str, tuple[str, ...]] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: str | Path | None = None) -> Lexicon:
        """The bundled lexicon (prompts/trigger_lexicon.json) or a JSON file of the same shape."""
        where = Path(path) if path else prompts.path("trigger_lexicon.json")
        try:
            data = json.loads(Path(str(where)).read_text(encoding="utf-8"))
            entries = {
                _norm(key): Entry(
                    _norm(key),
                    e.get("category", ""),
                    tuple(
                        Sense(s.get("pos"), s.get("sense", ""), tuple(s.get("substitutes", [])))
                        for s in e.get("senses", [])
                    ),
                    e.get("note", ""),
                    tuple(e.get("focus", [])),
                    key.strip(),
                )
                for key, e in data["entries"].items()
            }
        except FileNotFoundError:
            raise InputError(f"lexicon file '{where}' does not exist: check the path") from None
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError) as err:
            raise InputError(
                f"lexicon file '{where}' is not a lexprobe lexicon ({type(err).__name__}: {err}): "
                "see prompts/trigger_lexicon.json for the format"
            ) from err
        about = data.get("about", "")
        return cls(entries, str(where), " ".join(about) if isinstance(about, list) else about)

    def with_rewrites(self, rewrites: dict[str, list[str]]) -> Lexicon:
        """A copy where each user rewrite (key -> substitutes) is a trigger entry of category 'user'."""
        entries = dict(self.entries)
        for key, subs in rewrites.items():
            k = _norm(key)
            entries[k] = Entry(k, "user", (Sense(None, "user rewrite", tuple(subs)),), "given by the user")
        return Lexicon(entries, self.source, self.about)

    def pattern(self, key: str) -> tuple[str, ...]:
        """The key as lowercase spaCy tokens ('driver's licence' -> driver, 's, licence)."""
        if key not in self._patterns:
            words = nlp().tokenizer(key.replace(GAP, " \ue000 "))
            self._patterns[key] = tuple(
                GAP if t.text == "\ue000" else t.lower_ for t in words if not t.is_space
            )
        return self._patterns[key]

    def triggers(self, categories: tuple[str, ...] | None = None) -> list[str]:
        return [k for k, e in self.entries.items() if categories is None or e.category in categories]


def _norm(key: str) -> str:
    return " ".join(key.strip().lower().split())


@dataclass(frozen=True)
class Unit:
    """A word or phrase of a prompt that the engine may rewrite. Character spans index the prompt."""

    tokens: tuple[int, ...]  # spaCy token indices of the matched words (not the gap's)
    start: int  # first matched character
    end: int  # one past the last matched character (a gap lies inside)
    text: str  # surface, with '…' for a gap: "set … on fire"
    key: str  # lexicon key, or the lowercase lemma of a content word
    pos: str  # of the unit's syntactic head
    tag: str  # fine-grained tag of the head (drives inflection)
    head_first: bool  # the head is the first matched word (verb phrases) rather than the last
    base_form: bool  # the head is in its dictionary form (inflect nothing)
    trigger: bool
    category: str = ""
    gap: tuple[int, int] | None = None  # character span of the gap's words
    article: tuple[int, int] | None = None  # span of an 'a'/'an' right before the unit

    @property
    def index(self) -> int:
        return self.tokens[0]


def token_forms(tok) -> set[str]:
    """Forms a lexicon key word may match: surface, spaCy lemma, lemminflect's noun/verb lemma."""
    from lemminflect import getLemma

    lower = tok.lower_
    forms = {lower, tok.lemma_.lower()}
    if tok.pos_ in ("NOUN", "PROPN", "VERB", "ADJ"):
        upos = "VERB" if tok.pos_ == "VERB" else "NOUN" if tok.pos_ in ("NOUN", "PROPN") else "ADJ"
        forms.update(f.lower() for f in getLemma(lower, upos=upos))
    return forms


def _match_at(doc, start: int, pattern: tuple[str, ...], forms) -> list[tuple[list[int], tuple | None]]:
    """Matches of `pattern` starting at token `start`: (matched token indices, gap token range)."""
    out = []

    def walk(i: int, p: int, matched: list[int], gap):
        if p == len(pattern):
            out.append((matched, gap))
            return
        if i >= len(doc):
            return
        if pattern[p] == GAP:
            for n in range(1, MAX_GAP + 1):
                if i + n > len(doc) or any(doc[j].is_punct for j in range(i, i + n)):
                    break
                walk(i + n, p + 1, matched, (i, i + n))
            return
        if pattern[p] in forms[i]:
            walk(i + 1, p + 1, [*matched, i], gap)

    walk(start, 0, [], None)
    return out


def find_units(doc, lexicon: Lexicon) -> list[Unit]:
    """The prompt's units in text order: lexicon matches (longest first), then other content words."""
    forms = [token_forms(t) for t in doc]
    by_first: dict[str, list[str]] = {}
    for key in lexicon.entries:
        by_first.setdefault(lexicon.pattern(key)[0], []).append(key)
    matches = []  # (n words, start, key, tokens, gap)
    for i in range(len(doc)):
        for form in forms[i]:
            for key in by_first.get(form, []):
                pat = lexicon.pattern(key)
                found = _match_at(doc, i, pat, forms)
                if len(pat) == 2 and not found:  # a separable particle: "take my friend out"
                    found = [
                        (tokens, gap)
                        for tokens, gap in _match_at(doc, i, (pat[0], GAP, pat[1]), forms)
                        if doc[tokens[1]].dep_ == "prt"
                    ]
                matches += [(len(tokens), -i, key, tokens, gap) for tokens, gap in found]
    used: set[int] = set()
    units = []
    for _, _, key, tokens, gap in sorted(matches, key=lambda m: (-m[0], -m[1])):
        if used.isdisjoint(tokens):
            used.update(tokens)
            units.append(_unit(doc, tokens, gap, key, True, lexicon.entries[key].category))
    for tok in doc:
        if tok.i in used or tok.pos_ not in CONTENT_POS or tok.is_stop or not tok.is_alpha:
            continue
        key = tok.lemma_.lower() if tok.pos_ != "PROPN" else tok.text
        units.append(_unit(doc, [tok.i], None, key, False, ""))
    return sorted(units, key=lambda u: u.start)


def _unit(doc, tokens: list[int], gap, key: str, trigger: bool, category: str) -> Unit:
    from lemminflect import getInflection

    first, last = doc[tokens[0]], doc[tokens[-1]]
    segment = doc[tokens[0] : (gap[0] if gap else tokens[-1] + 1)]
    root = segment.root
    head_first = root.i == tokens[0] or len(tokens) == 1
    head = first if head_first else last
    inflected = head.tag_ in INFLECTED_TAGS and any(
        head.lower_ in getInflection(lemma, tag=head.tag_) for lemma in token_forms(head) - {head.lower_}
    )
    if gap:
        text = " ".join(doc[i].text for i in tokens if i < gap[0])
        text += " … " + " ".join(doc[i].text for i in tokens if i >= gap[1])
        gap_span = (doc[gap[0]].idx, doc[gap[1] - 1].idx + len(doc[gap[1] - 1]))
    else:
        text, gap_span = doc.text[first.idx : last.idx + len(last)], None
    article = None
    if first.i > 0 and doc[first.i - 1].lower_ in ("a", "an"):
        prev = doc[first.i - 1]
        article = (prev.idx, prev.idx + len(prev))
    return Unit(
        tuple(tokens),
        first.idx,
        last.idx + len(last),
        text,
        key,
        root.pos_ if not head_first else head.pos_,
        head.tag_,
        head_first,
        not inflected,
        trigger,
        category,
        gap_span,
        article,
    )
