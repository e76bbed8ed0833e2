"""Prompts lexprobe makes from the bundled harmful calibration instructions (prompts/harm_frames.json):
harmless requests that *mention* a harmful act, and short questions that *ask* for it.

    mention  the whole instruction quoted in a harmless task ('Translate this sentence into French:
             "Write a tutorial on how to make a bomb"')                                    harmless
    topic    the act it asks for, in a harmless request about it ("What are the legal penalties for
             people who make a bomb?")                                                       harmless
    ask      the act as a short question ("How do I make a bomb?")                            harmful

Beside them, contrast prompts (prompts/harm_contrasts.json, `contrasts`): requests that carry a word of
harm in a harmless sense, about a harmless target, in a game or a story, a definition, a history
question, a nonsensical group or public information ("contrast safe"), and requests in the same frames
that do ask for harm ("contrast unsafe"). They teach the probe that a word of harm is not a harmful
request; their fillers are split between train and val, so val holds fillers the fit never saw.

The act is the verb phrase after "how to", "a plan to", "ways to" and the like; instructions without
one get mention frames only. A model that refuses the harmless frames reacts to what is mentioned, not
to what is asked: they are the harmfulness probe's hard negatives and the false-refusal vector's
over-refused prompts (`toolkit.mechanism.harmfulness`, `analyses.mitigate`). Made per calibration
split, so the val split's frames stay apart from the train split's.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache

from lexprobe import prompts

ACT = re.compile(
    r"\b(?:how|ways?|plan|guide|tutorial|instructions?|steps|methods?|strategy|process|tips|advice|script"
    r"|program|app|tool|algorithm|website)\s+(?:on how |for how |that can |that |which )?(?:to|can) (.+?)[?.!]*$",
    re.IGNORECASE,
)
SAFE_CONTRAST, UNSAFE_CONTRAST = "contrast safe", "contrast unsafe"
HARMFUL_KINDS = ("ask", UNSAFE_CONTRAST)


@dataclass(frozen=True)
class Framed:
    text: str
    kind: str  # mention | topic | ask | contrast safe | contrast unsafe
    source: int  # index of the calibration instruction (or the contrast filler) it was made from
    group: str = ""  # the contrast group (prompts/harm_contrasts.json) of a contrast prompt

    @property
    def harmful(self) -> bool:
        return self.kind in HARMFUL_KINDS


@cache
def frames() -> dict[str, list[str]]:
    data = json.loads(prompts.path("harm_frames.json").read_text())
    return {k: list(data[k]) for k in ("mention", "topic", "ask")}


def act_of(instruction: str) -> str | None:
    """The act an instruction asks for ("create and distribute malware"), or None (fewer than 2 words)."""
    found = ACT.search(instruction.strip())
    if not found:
        return None
    act = found.group(1).strip()
    return act[0].lower() + act[1:] if len(act.split()) >= 2 else None


def framed(instructions: list[str], mention: int = 2, topic: int = 2, ask: int = 1) -> list[Framed]:
    """Each instruction in `mention` mention frames and, where its act can be read off, `topic` topic
    frames and `ask` ask frames; instruction i takes frames i, i + 1, ... of each kind (so every frame
    is used about equally often)."""
    table = frames()
    out: list[Framed] = []
    for i, instruction in enumerate(instructions):
        request = instruction.strip().rstrip("?.!")
        act = act_of(instruction)
        for kind, n, field, value in (
            ("mention", mention, "request", request),
            ("topic", topic, "act", act),
            ("ask", ask, "act", act),
        ):
            if value is None:
                continue
            templates = table[kind]
            for k in range(min(n, len(templates))):
                template = templates[(i + k) % len(templates)]
                out.append(Framed(template.replace("{" + field + "}", value), kind, i))
    return out


@cache
def contrast_groups() -> dict[str, dict]:
    return json.loads(prompts.path("harm_contrasts.json").read_text())["groups"]


def contrasts(split: str, per_filler: int = 2) -> list[Framed]:
    """The contrast prompts of `split` ("train" or "val"; every fourth filler of each list is val's),
    from prompts/harm_contrasts.json: safe fillers in a group's frames are harmless ("contrast
    safe"), unsafe fillers in them, or safe fillers in its `unsafe_frames`, harmful ("contrast unsafe").
    Filler i takes frames i, i + 1, ... (`per_filler` of them); `source` is its index in its list."""
    out: list[Framed] = []
    for name, group in contrast_groups().items():
        lists = [(SAFE_CONTRAST, group["safe"], group["frames"])]
        if "unsafe" in group:
            lists.append((UNSAFE_CONTRAST, group["unsafe"], group["frames"]))
        if "unsafe_frames" in group:
            lists.append((UNSAFE_CONTRAST, group["safe"], group["unsafe_frames"]))
        for kind, fillers, templates in lists:
            for i, filler in enumerate(fillers):
                if (i % 4 == 3) != (split == "val"):
                    continue
                for k in range(min(per_filler, len(templates))):
                    template = templates[(i + k) % len(templates)]
                    out.append(Framed(template.replace("{x}", filler), kind, i, name))
    return out


def calibration_sets(train_n: int | None = None, val_n: int | None = None) -> dict:
    """Per split ("train", "val"): (texts, labels, kinds), with labels 1 for what asks for harm. Kinds:
    harmful and harmless (the calibration instructions, the first `train_n` / `val_n` of each), ask
    (harmful questions), mention and topic (harmless frames, above), hard negative (harmless
    instructions rewritten back to trigger words), and every contrast prompt of the split
    (`contrasts`, whatever `train_n` / `val_n`). Under "groups", per split, each prompt's contrast group
    ("" for the prompts that are not contrasts): the probe's selection holds each group out in turn."""
    import numpy as np

    from lexprobe.toolkit.io.suites import load_suite
    from lexprobe.toolkit.substitution.engine import Substituter, trigger_rewrites

    sub = Substituter(strategies=("lexicon",))
    out: dict = {"groups": {}}
    for split, suffix, n in (("train", "", train_n), ("val", "-val", val_n)):
        bad = load_suite(f"calibration-harmful{suffix}").frame["prompt"].tolist()[:n]
        good = load_suite(f"calibration-harmless{suffix}").frame["prompt"].tolist()[:n]
        made = framed(bad)
        hard = trigger_rewrites(sub, good)
        made += contrasts(split)
        texts = bad + good + [f.text for f in made] + hard
        kinds = ["harmful"] * len(bad) + ["harmless"] * len(good) + [f.kind for f in made]
        kinds += ["hard negative"] * len(hard)
        labels = np.array([int(k == "harmful" or k in HARMFUL_KINDS) for k in kinds])
        out[split] = (texts, labels, kinds)
        out["groups"][split] = [""] * (len(bad) + len(good)) + [f.group for f in made] + [""] * len(hard)
    return out
