"""Candidate rewrites of a prompt's words that keep its meaning and grammar.

For each unit of a prompt (`toolkit.lexicon.find_units`: lexicon phrases, then content words), the
strategies of `SUBSTITUTION_STRATEGIES` propose substitutes in base form:

  user     user-given rewrites (key -> substitutes); they make the unit a trigger
  lexicon  the trigger lexicon (prompts/trigger_lexicon.json): neutral substitutes by sense
  auto     for content words outside the lexicon (nouns and verbs by default): the chat model's
           input-embedding neighbours of the lemma that are known English words of the same part of
           speech and not morphological relatives or triggers

A trigger unit only takes user or lexicon substitutes (an embedding neighbour of "kill" is "murder").
Each proposal is rendered into the prompt: the inflected word gets the original's tag (lemminflect:
"killing" -> "stopping", "shoots" -> "films"), capitalisation is transferred, a preceding a/an is
fixed, a phrase's gap is kept ("take my friend out" -> "bring my friend"), and nothing else of the text
changes (punctuation survives). Then candidates are filtered and ranked:

  POS      (auto) spaCy must tag the rewritten word with the original's part of speech
  meaning  all-MiniLM-L6-v2 cosine similarity of variant and original >= `min_similarity`; auto
           candidates must also lie within `similarity_margin` of the unit's most similar one (at
           most `shortlist` of them). Lexicon senses are not pre-ranked by MiniLM, which prefers the
           wrong sense ("stopping time" 0.89 over "spending time" 0.83 for "killing time").
  fluency  among those, the chat model's log-probability of the variant minus the original's ranks
           (in the chat context when a study passes `VariantScorer.fluency`, else as plain text); the
           `per_word` most fluent are kept. This is the sense selection: in the chat context the
           default model puts "spending time at the airport" 9.9 nats above the original, "stopping
           time" 5.1 (measured, docs/minimal_pairs.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.models.language import nlp
from lexprobe.toolkit.registry import Registry
from lexprobe.toolkit.substitution.lexicon import INFLECTED_TAGS, Lexicon, Unit, find_units

SUBSTITUTION_STRATEGIES: Registry = Registry("substitution strategy")
CURATED_SHORTLIST = 12  # lexicon/user substitutes of one word that go on to the fluency ranking
AN_EXCEPTIONS = ("uni", "use", "usu", "eu", "one", "once")
AN_SILENT_H = ("hour", "honest", "honour", "honor", "heir")


@dataclass(frozen=True)
class Proposal:
    substitute: str  # base form; '*' marks where a phrase's gap goes
    strategy: str
    sense: str = ""


@dataclass(frozen=True)
class Candidate:
    unit: Unit
    substitute: str
    replacement: str  # the surface text that replaced the unit (inflected, cased, gap included)
    variant: str
    span: tuple[int, int]  # the replacement's characters in `variant`
    strategy: str
    sense: str = ""
    similarity: float = float("nan")  # MiniLM cosine of variant and original
    fluency: float = float("nan")  # log P(variant) - log P(original) under the chat model


# ------------------------------------------------------------------------------------ rendering
def inflect(word: str, tag: str) -> str:
    """`word` (a base form) in the form `tag` asks for (lemminflect); unchanged for base-form tags and
    for words already in that form ("Catholics" for NNS)."""
    if tag not in INFLECTED_TAGS:
        return word
    from lemminflect import getInflection, getLemma

    upos = {"V": "VERB", "N": "NOUN", "J": "ADJ", "R": "ADV"}[tag[0]]
    base = getLemma(word, upos=upos)
    if base and base[0] != word and word in getInflection(base[0], tag=tag):
        return word
    forms = getInflection(word, tag=tag)
    return forms[0] if forms else word


def match_case(original: str, new: str) -> str:
    """Carry the original's capitalisation over: ALL CAPS, or an initial capital."""
    if len(original) > 1 and original.isupper() and not new.isupper():
        return new.upper()
    if original[:1].isupper() and new[:1].islower():
        return new[:1].upper() + new[1:]
    return new


def indefinite_article(word: str, like: str) -> str:
    """'a' or 'an' before `word` by its spelling (a heuristic for its first sound), cased like `like`."""
    w = word.lower()
    vowel = (w[:1] in "aeiou" and not w.startswith(AN_EXCEPTIONS)) or w.startswith(AN_SILENT_H)
    return match_case(like, "an" if vowel else "a")


def render(text: str, unit: Unit, substitute: str) -> tuple[str, str, tuple[int, int]]:
    """(variant, replacement, replacement span in the variant) for `substitute` put in place of `unit`."""
    words = substitute.split()
    slots = [i for i, w in enumerate(words) if w != "*"]
    if not slots:
        raise InputError(f"substitute '{substitute}' has no word: give at least one word")
    at = slots[0] if unit.head_first else slots[-1]
    if not unit.base_form:
        words[at] = inflect(words[at], unit.tag)
    gap = text[unit.gap[0] : unit.gap[1]] if unit.gap else ""
    if gap and "*" not in words:
        words.append("*")
    replacement = (
        " ".join(gap if w == "*" else w for w in words) if gap else " ".join(w for w in words if w != "*")
    )
    replacement = match_case(text[unit.start : unit.end], replacement)
    head, tail = text[: unit.start], text[unit.end :]
    if unit.article:
        a0, a1 = unit.article
        head = text[:a0] + indefinite_article(replacement, text[a0:a1]) + text[a1 : unit.start]
    return head + replacement + tail, replacement, (len(head), len(head) + len(replacement))


def trigger_rewrites(sub, texts: list[str]) -> list[str]:
    """Each text with its first word that the lexicon lists as a harmless substitute of a trigger put
    back to that trigger, inflected alike ("How do I stop the program?" -> "How do I kill the program?");
    texts without such a word are left out."""
    back: dict[str, str] = {}
    for entry in sub.lexicon.entries.values():
        if " " in entry.key or "*" in entry.key:
            continue
        for sense in entry.senses:
            for word in sense.substitutes:
                if " " not in word:
                    back.setdefault(word.lower(), entry.display or entry.key)
    out = []
    for text in texts:
        unit = next((u for u in sub.units(text) if not u.trigger and u.key in back), None)
        if unit is not None:
            out.append(render(text, unit, back[unit.key])[0])
    return out


def rewrite(text: str, target: str, substitute: str, lexicon: Lexicon | None = None) -> str:
    """`text` with the word or phrase `target` (a lemma: 'kill', 'blow up', 'set * on fire') replaced by
    `substitute`, inflected like the original ("Killing time" -> "Spending time")."""
    lex = (lexicon or Lexicon({}, "rewrite")).with_rewrites({target: [substitute]})
    key = " ".join(target.lower().split())
    units = [u for u in find_units(nlp()(text), lex) if u.key == key]
    if not units:
        raise InputError(f"'{target}' does not occur in '{text}': check the word or give its lemma")
    return render(text, units[0], substitute)[0]


# ------------------------------------------------------------------------------------ strategies
@dataclass
class StrategyContext:
    lexicon: Lexicon
    neighbours: object | None = None  # toolkit.neighbours.EmbeddingNeighbours
    auto_pos: tuple[str, ...] = ("NOUN", "VERB")
    k: int = 40


@SUBSTITUTION_STRATEGIES.register("user")
def user_strategy(ctx: StrategyContext, unit: Unit) -> list[Proposal]:
    entry = ctx.lexicon.entries.get(unit.key) if unit.trigger else None
    if entry is None or entry.category != "user":
        return []
    return [Proposal(sub, "user", sense) for sub, sense in entry.substitutes(unit.pos)]


@SUBSTITUTION_STRATEGIES.register("lexicon")
def lexicon_strategy(ctx: StrategyContext, unit: Unit) -> list[Proposal]:
    entry = ctx.lexicon.entries.get(unit.key) if unit.trigger else None
    if entry is None or entry.category == "user":
        return []
    return [Proposal(sub, "lexicon", sense) for sub, sense in entry.substitutes(unit.pos)]


@SUBSTITUTION_STRATEGIES.register("auto")
def auto_strategy(ctx: StrategyContext, unit: Unit) -> list[Proposal]:
    if unit.trigger or unit.pos not in ctx.auto_pos or ctx.neighbours is None or len(unit.key) < 3:
        return []
    if unit.text[:1].isupper() and unit.index > 0:  # a name or an acronym mid-sentence ("C", "SQL")
        return []
    from lemminflect import getAllLemmas

    if not getAllLemmas(unit.text.lower(), upos=unit.pos):  # likely a tagging error ("poison vermin": VERB)
        return []
    stop_words = nlp().Defaults.stop_words
    out, seen = [], {unit.key}
    for word in ctx.neighbours(unit.key, ctx.k):
        lemmas = getAllLemmas(word, upos=unit.pos).get(unit.pos)
        if not lemmas:  # not an English word of this part of speech (lemminflect's dictionary)
            continue
        lemma = lemmas[0].lower()
        if (
            lemma in seen
            or lemma in stop_words
            or _relatives(lemma, unit.key)
            or lemma in ctx.lexicon.entries
        ):
            continue
        seen.add(lemma)
        out.append(Proposal(lemma, "auto", "embedding neighbour"))
    return out


def _relatives(a: str, b: str) -> bool:
    """Morphological relatives by shared stem ('paint'/'painting', 'maximise'/'maximize')."""
    shorter = min(len(a), len(b))
    common = len(os.path.commonprefix([a, b]))
    return common >= 4 and common >= shorter - 2


# ------------------------------------------------------------------------------------ engine
class Substituter:
    """Candidate rewrites for many prompts at once (spaCy, MiniLM and the model run in batches)."""

    def __init__(
        self,
        lexicon: Lexicon | None = None,
        strategies: tuple[str, ...] = ("lexicon", "auto"),
        lm=None,
        rewrites: dict[str, list[str]] | None = None,
        min_similarity: float | None = 0.7,
        per_word: int = 1,
        shortlist: int = 4,
        similarity_margin: float = 0.1,
        auto_pos: tuple[str, ...] = ("NOUN", "VERB"),
        neighbours: int = 40,
        batch_size: int = 16,
        fluency=None,
        max_content_words: int | None = None,
    ):
        """`fluency(texts) -> log-probabilities` ranks candidates; by default the model's plain-text
        log-probability (`toolkit.neighbours.sentence_logprob`), or MiniLM similarity without a model.
        `max_content_words` caps the non-trigger words rewritten per prompt (those with a trigger's part
        of speech first, then in text order); every trigger is always rewritten."""
        for name in strategies:
            SUBSTITUTION_STRATEGIES.get(name)  # unknown names fail here, with a hint
        if per_word < 1:
            raise InputError(f"--per-word must be at least 1, got {per_word}")
        if min_similarity is not None and not -1 <= min_similarity <= 1:
            raise InputError(f"--min-similarity must lie in [-1, 1], got {min_similarity}")
        lexicon = lexicon or Lexicon.load()
        if rewrites:
            lexicon = lexicon.with_rewrites(rewrites)
            strategies = ("user", *[s for s in strategies if s != "user"])
        if "auto" in strategies and lm is None:
            raise InputError("the 'auto' substitution strategy needs a model: pass lm=")
        from lexprobe.toolkit.substitution.neighbours import EmbeddingNeighbours

        self.lexicon, self.strategies, self.lm = lexicon, tuple(strategies), lm
        self.min_similarity, self.per_word, self.shortlist = min_similarity, per_word, shortlist
        self.similarity_margin = similarity_margin
        if max_content_words is not None and max_content_words < 0:
            raise InputError(f"--content-words must be 0 or more, got {max_content_words}")
        self.max_content_words = max_content_words
        self.batch_size = batch_size
        if fluency is None and lm is not None:
            from lexprobe.toolkit.substitution.neighbours import sentence_logprob

            def fluency(texts):
                return sentence_logprob(lm, texts, batch_size)

        self.fluency = fluency or None  # False: rank by similarity even with a model
        self.context = StrategyContext(
            lexicon, EmbeddingNeighbours(lm) if "auto" in strategies else None, tuple(auto_pos), neighbours
        )

    def describe(self) -> dict:
        return {
            "lexicon": self.lexicon.source,
            "strategies": list(self.strategies),
            "min_similarity": self.min_similarity,
            "per_word": self.per_word,
            "shortlist": self.shortlist,
            "similarity_margin": self.similarity_margin,
            "max_content_words": self.max_content_words,
            "auto_pos": list(self.context.auto_pos),
            "neighbours": self.context.k,
            "ranking": "fluency (model log-probability)" if self.fluency is not None else "similarity",
        }

    def units(self, text: str) -> list[Unit]:
        return find_units(nlp()(text), self.lexicon)

    def proposals(self, unit: Unit) -> list[Proposal]:
        for name in self.strategies:  # the first strategy with something to say wins
            found = SUBSTITUTION_STRATEGIES.get(name)(self.context, unit)
            if found:
                return found
        return []

    def candidates(self, texts: list[str]) -> tuple[list[list[Unit]], list[list[Candidate]]]:
        """Per text: its units, and the kept candidates (at most `per_word` per unit), in unit order."""
        docs = list(nlp().pipe(texts))
        units = [find_units(doc, self.lexicon) for doc in docs]
        raw: list[list[Candidate]] = []
        for text, text_units in zip(texts, units):
            found = []
            for unit in self._selected(text_units):
                seen = {text}
                for p in self.proposals(unit):
                    variant, replacement, span = render(text, unit, p.substitute)
                    if variant not in seen:
                        seen.add(variant)
                        found.append(
                            Candidate(unit, p.substitute, replacement, variant, span, p.strategy, p.sense)
                        )
            raw.append(found)
        raw = self._check_pos(raw)
        raw = self._check_meaning(texts, raw)
        return units, self._rank(texts, raw)

    def _selected(self, units: list[Unit]) -> list[Unit]:
        if self.max_content_words is None:
            return units
        trigger_pos = {u.pos for u in units if u.trigger}
        content = sorted(
            (u for u in units if not u.trigger), key=lambda u: (u.pos not in trigger_pos, u.start)
        )
        keep = {u.tokens for u in content[: self.max_content_words]}
        return [u for u in units if u.trigger or u.tokens in keep]

    def _check_pos(self, raw: list[list[Candidate]]) -> list[list[Candidate]]:
        auto = [c for cands in raw for c in cands if c.strategy == "auto"]
        ok = set()
        for cand, doc in zip(auto, nlp().pipe([c.variant for c in auto])):
            tok = next((t for t in doc if t.idx >= cand.span[0]), None)
            if tok is not None and tok.pos_ == cand.unit.pos:
                ok.add(id(cand))
        return [[c for c in cands if c.strategy != "auto" or id(c) in ok] for cands in raw]

    def _check_meaning(self, texts, raw: list[list[Candidate]]) -> list[list[Candidate]]:
        if self.min_similarity is None:
            return raw
        from lexprobe.toolkit.models.sentence import embed

        variants = sorted({c.variant for cands in raw for c in cands})
        if not variants:
            return raw
        vecs = dict(zip(variants, embed(variants)))
        origs = embed(list(texts))
        out = []
        for orig, cands in zip(origs, raw):
            scored = [replace(c, similarity=float(vecs[c.variant] @ orig)) for c in cands]
            out.append([c for c in scored if c.similarity >= self.min_similarity])
        return out

    def _rank(self, texts, raw: list[list[Candidate]]) -> list[list[Candidate]]:
        """Per unit: lexicon and user substitutes that passed the meaning filter (at most
        CURATED_SHORTLIST), or the auto candidates within `similarity_margin` of the most similar one
        (at most `shortlist`); ranked by fluency where the model is given and there is a choice."""
        groups = []  # per text: [[candidates of one unit], ...]
        for cands in raw:
            by_unit: dict[tuple, list[Candidate]] = {}
            for c in cands:
                by_unit.setdefault(c.unit.tokens, []).append(c)
            text_groups = []
            for group in by_unit.values():
                group = sorted(group, key=_by_similarity)
                if group[0].strategy != "auto":  # curated substitutes: the model picks the sense
                    text_groups.append(group[:CURATED_SHORTLIST])
                    continue
                best = group[0].similarity
                if not np.isnan(best):
                    group = [c for c in group if c.similarity >= best - self.similarity_margin]
                text_groups.append(group[: self.shortlist])
            groups.append(text_groups)
        if self.fluency is not None:
            todo = [(t, g) for t, text_groups in enumerate(groups) for g in text_groups if len(g) > 1]
            variants = sorted({c.variant for _, g in todo for c in g})
            if variants:
                needed = sorted({t for t, _ in todo})
                scores = np.asarray(self.fluency([texts[t] for t in needed] + variants), dtype=float)
                base = dict(zip(needed, scores[: len(needed)]))
                lp = dict(zip(variants, scores[len(needed) :]))
                for t, text_groups in enumerate(groups):
                    groups[t] = [
                        [replace(c, fluency=float(lp[c.variant] - base[t])) for c in g] if len(g) > 1 else g
                        for g in text_groups
                    ]
        key = _by_similarity if self.fluency is None else _by_fluency
        return [
            sorted(
                (c for g in text_groups for c in sorted(g, key=key)[: self.per_word]),
                key=lambda c: c.unit.start,
            )
            for text_groups in groups
        ]


def _by_similarity(c: Candidate):
    return -np.nan_to_num(c.similarity, nan=-2.0)


def _by_fluency(c: Candidate):
    return (-np.nan_to_num(c.fluency, nan=-np.inf), _by_similarity(c))


def parse_rewrites(items: list[str]) -> dict[str, list[str]]:
    """`--rewrite 'kill=stop,end'` items -> {'kill': ['stop', 'end']}. The command line splits list
    values at commas, so an item without '=' is one more substitute of the word before it."""
    out: dict[str, list[str]] = {}
    key = None
    for item in items:
        word, sep, subs = item.partition("=")
        if sep:
            key = " ".join(word.lower().split())
        values = [s.strip() for s in (subs if sep else item).split(",") if s.strip()]
        if not key or not values:
            raise InputError(
                f"--rewrite '{item}' is not WORD=SUBSTITUTE[,SUBSTITUTE...]: e.g. --rewrite kill=stop"
            )
        out.setdefault(key, []).extend(values)
    return out
