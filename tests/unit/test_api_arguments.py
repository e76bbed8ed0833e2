"""The Python API checks its arguments at the boundary, as the CLI checks the flag of the same name:
a wrong type or value is one InputError naming the argument, before any work."""

from __future__ import annotations

import inspect
import math

import pandas as pd
import pytest

import lexprobe
from lexprobe import api, arguments
from lexprobe.toolkit.errors import InputError

COMMANDS = {
    "score": "score", "generate": "generate", "attribute": "attribute", "perturb": "perturb",
    "pairs": "pairs", "contrast": "contrast", "diagnose": "diagnose", "direction": "direction",
    "harmfulness": "harmfulness", "pathway": "pathway", "mitigate": "mitigate",
}  # fmt: skip


@pytest.fixture(scope="module")
def probe():
    return lexprobe.load("tiny-random", dtype="float32")


def test_every_argument_with_a_flag_is_checked_by_that_flags_own_type():
    from lexprobe.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    checked = 0
    for command, method in COMMANDS.items():
        actions = {a.dest: a for a in sub.choices[command]._actions}
        for name in inspect.signature(getattr(api.Probe, method)).parameters:
            action = actions.get(name)
            kind = getattr(action, "item", None) or getattr(action, "type", None)
            if action is None or kind is None or name == "ablate" and method == "steered":
                continue
            declared = arguments.ARGUMENTS.get(name)
            assert declared in (kind, [kind]), f"{method}({name}=...) is not checked as --{name} is"
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize(
    ("call", "says"),
    [
        (lambda p: p.mitigate(ablate="x"), "ablate must be a number, not 'x'"),
        (lambda p: p.mitigate(coefficients=[0.5, 2]), "coefficients is a share"),
        (lambda p: p.direction(val_prompts="3"), "val_prompts must be a whole number, not '3'"),
        (lambda p: p.pathway(5, 6), "prompt must be text, not 5"),
        (lambda p: p.pairs([(None, None)]), "pairs: give (prompt_a, prompt_b) tuples"),
        (lambda p: p.attribute(["hi there"], tolerance=math.nan), "tolerance must be a finite number"),
        (lambda p: p.score(""), "the prompt is empty"),
        (lambda p: p.score("   "), "the prompt is empty"),
        (lambda p: p.score(["a \ud800 b"]), "unpaired surrogate"),
        (lambda p: p.score(pd.DataFrame({"prompt": ["a \ud800 b"]}, dtype=object)), "unpaired surrogate"),
        (lambda p: p.score("xstest", limit=2.5), "limit must be a whole number, not 2.5"),
        (lambda p: p.score("xstest", layers="yes"), "layers must be True or False"),
        (lambda p: p.perturb(["kill a process"], min_similarity=3), "min_similarity is a cosine similarity"),
        (lambda p: p.steered(ablate=5).__enter__(), "ablate is the share of the direction removed"),
        (lambda p: p.steered(add=1e9).__enter__(), "add is a multiple of the direction"),
        (lambda p: p.generate(["hi there"], max_new_tokens=0), "max_new_tokens must be at least 1"),
        (lambda p: p.contrast(seed=-1), "seed must be from 0"),
        (lambda p: p.score(types=3), "types must be text, not 3"),
        (lambda p: p.attribute(["hi there"], n_steps=True), "n_steps must be a whole number, not True"),
        (lambda p: p.score(["hi there"], harmfulness=1.5), "harmfulness must be bool or str"),
        (lambda p: p.score(["hi there"], limt=2), "score: got an unexpected keyword argument 'limt'"),
        (lambda p: p.score("xstest", typs=["homonyms"]), "did you mean types?"),
        (lambda p: p.steered("nope.json").__enter__(), "fix 'nope.json' does not exist"),
        (lambda p: p.contrast(types=["homonym"]), "did you mean 'homonyms'?"),
        (lambda p: p.attribute(["hi there"], tolerence=0.1), "did you mean tolerance?"),
        (lambda p: p.perturb(["kill a process"], attributions=123), "attributions must be"),
        (lambda p: p.pairs(None), "pairs must be"),
        (lambda p: p.pairs({"prompt_a": "x", "prompt_b": "y"}), "pairs must be"),
        (lambda p: p.pairs(pd.DataFrame({"prompt_a": ["a b", None], "prompt_b": ["c d", "e"]})), "row 2"),
        (lambda p: p.pairs(pd.DataFrame({"prompt_a": [1], "prompt_b": [3]})), "is 1, not text"),
        (lambda p: p.pairs([("kill \ud800", "stop")]), "no unpaired surrogates"),
        (lambda p: p.pathway("How do I kill a \ud800?", "x y"), "prompt has an unpaired surrogate"),
        (lambda p: p.pathway("a b", "c d", direction=5), "direction must be"),
        (lambda p: p.mitigate(["x y"], harmfulness=7), "harmfulness must be"),
        (lambda p: p.steered(123), "fix must be"),
        (lambda p: p.steered(direction="d.json"), "a direction alone steers nothing"),
    ],
)
def test_wrong_arguments_are_one_input_error_naming_them(probe, call, says):
    with pytest.raises(InputError) as caught:
        call(probe)
    assert says in str(caught.value)


def test_load_checks_its_arguments_too():
    with pytest.raises(InputError, match="batch_size must be at least 1"):
        lexprobe.load("tiny-random", batch_size=0)
    with pytest.raises(InputError, match="dtype must be text"):
        lexprobe.load("tiny-random", dtype=32)


def test_one_value_is_a_list_of_one(probe):
    assert arguments.check_argument("ablate", 0.5, arguments.ARGUMENTS["ablate"]) == [0.5]
    assert arguments.check_argument("types", "homonyms", arguments.ARGUMENTS["types"]) == ["homonyms"]


def test_errors_from_below_name_the_keyword_not_the_flag(probe):
    """A study's message names options by their flags; the API tells it in the caller's terms."""
    with pytest.raises(InputError) as err:
        probe.perturb(["kill a process"], strategies=["user"])
    message = str(err.value)
    assert "rewrites=" in message and "strategies=" in message and "--" not in message
    with pytest.raises(InputError) as err:
        probe.score("xstest", types=["homonym"])
    assert "--type" not in str(err.value) and "homonyms" in str(err.value)
