"""Prompts lexprobe makes from the bundled harmful calibration instructions (prompts/harm_frames.json):
harmless requests that *mention* a harmful act, and short questions that *ask* for it.

    mention  the whole instruction quoted in a harmless task ('Translate this sentence into French:
             "Write a tutorial on how to make a bomb"')                                    harmless
    topic    the act it asks for, in a harmless request about it ("What are the legal penalties for
             people who make a bomb?")                                                       harmless
    ask      the act as a short question ("How do I make a bomb?")                            harmful

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
HARMFUL_KINDS = ("ask",)


@dataclass(frozen=True)
class Framed:
    text: str
    kind: str  # mention | topic | ask
    source: int  # index of the calibration instruction it was made from

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


def calibration_sets(train_n: int | None = None, val_n: int | None = None) -> dict:
    """Per split ("train", "val"): (texts, labels, kinds), with labels 1 for what asks for harm. Kinds:
    harmful and harmless (the calibration instructions, the first `train_n` / `val_n` of each), ask
    (harmful questions), mention and topic (harmless frames, above) and hard
    negative (harmless instructions rewritten back to trigger words)."""
    import numpy as np

    from lexprobe.toolkit.io.suites import load_suite
    from lexprobe.toolkit.substitution.engine import Substituter, trigger_rewrites

    sub = Substituter(strategies=("lexicon",))
    out = {}
    for split, suffix, n in (("train", "", train_n), ("val", "-val", val_n)):
        bad = load_suite(f"calibration-harmful{suffix}").frame["prompt"].tolist()[:n]
        good = load_suite(f"calibration-harmless{suffix}").frame["prompt"].tolist()[:n]
        made = framed(bad)
        hard = trigger_rewrites(sub, good)
        texts = bad + good + [f.text for f in made] + hard
        kinds = ["harmful"] * len(bad) + ["harmless"] * len(good) + [f.kind for f in made]
        kinds += ["hard negative"] * len(hard)
        labels = np.array([int(k in ("harmful", "ask")) for k in kinds])
        out[split] = (texts, labels, kinds)
    return out
