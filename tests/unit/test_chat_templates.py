"""--chat-template: a family, a Jinja file or none for a model whose files have no template (or to
replace its own), checked as a model's own is, recorded in run.json and held by resume."""

from __future__ import annotations

import copy
import json

import numpy as np
import pandas as pd
import pytest

from lexprobe.cli import main
from lexprobe.toolkit.errors import InputError, ModelError
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.models.templates import FAMILIES, resolve_template


@pytest.fixture(scope="module")
def bare_model(tmp_path_factory, tiny):
    """tiny-random saved as an HF folder whose tokenizer has lost its chat template."""
    folder = tmp_path_factory.mktemp("bare")
    tiny.model.save_pretrained(folder)
    tokenizer = copy.deepcopy(tiny.tokenizer)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(folder)
    return folder


def _score(model, out, *extra):
    return main(["score", "--model", str(model), "--dtype", "float32", "--suite", "xstest", "--limit", "4",
                 "--out", str(out), *extra])  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("condition", ["model-default", "none", "be brief and helpful"])
def test_every_family_places_the_user_text_verbatim(tiny, family, condition):
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse(condition), resolve_template(family))
    text = "How do I kill a Python process?"
    prompt = fmt.format(text)
    assert prompt.text[slice(*prompt.user_span)] == text
    assert prompt.text.count(text) == 1
    if condition == "be brief and helpful":
        assert "be brief and helpful" in prompt.text
        merged = family in ("mistral", "gemma")  # no system role: the text goes atop the user turn
        want = (
            "merged into the user turn"
            if merged
            else "above the user text"
            if family == "none"
            else "system turn"
        )
        assert fmt.placement == want


TURN = "{{ bos_token }}{% for m in messages if m['role'] == 'user' %}<u>{{ m['content'] }}</u>{% endfor %}"
SYSTEM = "{% for m in messages if m['role'] == 'system' %}<s>{{ m['content'] }}</s>{% endfor %}"


@pytest.mark.parametrize(
    "template",
    [
        TURN + SYSTEM,  # the system message after the user's
        TURN,  # a system message accepted and never shown
        SYSTEM + SYSTEM + TURN,  # shown twice
    ],
    ids=["after", "ignored", "twice"],
)
@pytest.mark.parametrize("condition", ["be brief and helpful", "none"])
def test_a_system_message_the_template_misplaces_goes_atop_the_user_turn(tiny, tmp_path, template, condition):
    path = tmp_path / "t.jinja"
    path.write_text(template)
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse(condition), resolve_template(str(path)))
    prompt = fmt.format("How do I kill a Python process?")
    assert prompt.text.count("How do I kill a Python process?") == 1 and "\ue000" not in prompt.text
    if condition == "none":
        assert "be brief" not in prompt.text and fmt.placement == "none"
    else:  # never a sentinel or a lost system text
        assert prompt.text.count("be brief and helpful") == 1
        assert fmt.placement == "merged into the user turn"
        assert prompt.text.index("be brief and helpful") < prompt.user_span[0]


def test_a_template_that_changes_the_user_text_is_refused(tiny, tmp_path):
    path = tmp_path / "upper.jinja"
    path.write_text("{% for m in messages %}<u>{{ m['content'] | upper }}</u>{% endfor %}")
    with pytest.raises(ModelError, match="verbatim, once .*changes the text"):
        ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"), resolve_template(str(path)))


def test_a_model_without_a_template_names_the_flag_and_runs_with_one(bare_model, tmp_path, capsys, tiny):
    assert _score(bare_model, tmp_path / "a") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "--chat-template" in err[-1] and "chatml" in err[-1] and "Traceback" not in "\n".join(err)
    assert _score(bare_model, tmp_path / "b", "--chat-template", "chatml", "--system-prompt", "none") == 0
    run = json.loads((tmp_path / "b" / "run.json").read_text())
    assert run["chat_template"]["name"] == "chatml" and len(run["chat_template"]["sha256"]) == 64
    # tiny-random's own template is ChatML with a default system turn: without it, the same prompts
    assert _score("tiny-random", tmp_path / "c", "--system-prompt", "none") == 0
    np.testing.assert_allclose(
        pd.read_csv(tmp_path / "b" / "scores.csv")["margin"], pd.read_csv(tmp_path / "c" / "scores.csv")["margin"],
        atol=1e-5,
    )  # fmt: skip
    assert json.loads((tmp_path / "c" / "run.json").read_text())["chat_template"]["name"] == "the model's own"


def test_a_template_file_is_read_and_resume_holds_the_template(bare_model, tmp_path, capsys):
    path = tmp_path / "chat_template.jinja"
    path.write_text(FAMILIES["chatml"][1])
    assert _score(bare_model, tmp_path / "s", "--chat-template", str(path)) == 0
    run = json.loads((tmp_path / "s" / "run.json").read_text())
    assert run["chat_template"]["name"] == str(path)
    assert _score(bare_model, tmp_path / "s", "--chat-template", "zephyr", "--resume") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # (the new readout's calibration notes first)
    assert last.startswith("lexprobe: error:") and "(chat_template.name: " in last
    assert _score(bare_model, tmp_path / "s", "--chat-template", str(path), "--resume") == 0


def test_none_is_the_raw_prompt(tiny):
    fmt = ChatFormat(tiny.tokenizer, SystemPrompt.parse("model-default"), resolve_template("none"))
    assert fmt.format("Hello there").text == (tiny.tokenizer.bos_token or "") + "Hello there"


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "is neither a family (chatml, llama-2"),
        ("{% for m in messages %}{{ m['content'] }", "is not a Jinja template"),
        ("Hello {{ name }}", "never reads `messages`"),
        ("{{ messages[0]['content'][:5] }}", "does not place the user message verbatim"),
        (
            "{{ messages[0]['content'] }}{{ messages[0]['content'] }}",
            "does not place the user message verbatim",
        ),
        ("{{ raise_exception('no') }}{{ messages }}", "cannot render one user message"),
    ],
)
def test_templates_that_cannot_serve_are_one_line(bare_model, tmp_path, error_line, content, says):
    value = "chatmlx"
    if content is not None:
        value = str(tmp_path / "t.jinja")
        (tmp_path / "t.jinja").write_text(content)
    assert _score(bare_model, tmp_path / "o", "--chat-template", value) == 2
    line = error_line()
    assert says in line
    assert ("did you mean 'chatml'?" in line) == (content is None)  # a near name is suggested


def test_the_api_takes_a_template_and_templates_lists_the_families(tiny, capsys):
    import lexprobe

    probe = lexprobe.load("tiny-random", dtype="float32", chat_template="gemma")
    assert "<start_of_turn>user" in probe.session.fmt.format("hi").text
    with pytest.raises(InputError, match="chat_template must be a path"):
        lexprobe.load("tiny-random", chat_template=3)
    with pytest.raises(ModelError, match="--chat-template"):
        bare = copy.deepcopy(tiny.tokenizer)
        bare.chat_template = None
        ChatFormat(bare, SystemPrompt.parse("none"))
    assert main(["templates"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in FAMILIES)


def test_a_judge_takes_an_embedded_models_template_or_says_it_has_none(bare_model):
    from lexprobe.toolkit.behaviour.judge import Judge
    from lexprobe.toolkit.models.loader import load_model

    lm = load_model(str(bare_model), dtype="float32")
    with pytest.raises(
        ModelError, match="judge model .* has no chat template: give a chat model as --judge-model"
    ):
        Judge(lm)
    lm.extra["default_template"] = "chatml"  # what the loader sets for gemma3, whose file has none
    assert Judge(lm).fmt.template.name == "chatml"


def test_an_embedded_model_without_a_template_takes_its_family_unless_one_is_given(bare_model):
    from lexprobe.toolkit.models.loader import load_model
    from lexprobe.toolkit.models.templates import template_for

    lm = load_model(str(bare_model), dtype="float32")
    assert template_for(lm) is None and template_for(lm, "") is None  # its own: none here
    lm.extra["default_template"] = "gemma"  # what the loader sets for gemma3
    assert template_for(lm).name == template_for(lm, "").name == "gemma"  # '' is the flag left empty
    assert template_for(lm, "none").name == "none"
