"""The command line's contract with the configs: one flag per field with the field's default, every
default in --help, one list syntax, and --version."""

from __future__ import annotations

import argparse

import pytest

from lexprobe.analyses.attribute import AttributeConfig, HeatmapConfig
from lexprobe.analyses.contrast import ContrastConfig
from lexprobe.analyses.diagnose import DiagnoseConfig
from lexprobe.analyses.evaluate import ClassifyConfig, EvaluateConfig
from lexprobe.analyses.generate import GenerateConfig
from lexprobe.analyses.margin_validity import ValidityConfig
from lexprobe.analyses.minimal_pairs import PairsConfig, PerturbConfig
from lexprobe.analyses.plausibility import PlausibilityConfig
from lexprobe.analyses.score import ScoreConfig
from lexprobe.analyses.transplant import TransplantConfig
from lexprobe.cli import build_parser, main

# command, the required flags, the config it builds, the config's own values for those flags
COMMANDS = [
    ("score", ["--suite", "xstest", "--out", "d"], ScoreConfig, {"out": "d"}),
    ("generate", ["--suite", "xstest", "--out", "d"], GenerateConfig, {"out": "d"}),
    (
        "classify",
        ["--completions", "c.csv", "--out", "d"],
        ClassifyConfig,
        {"completions": "c.csv", "out": "d"},
    ),
    (
        "evaluate",
        ["--completions", "c.csv", "--out", "d"],
        EvaluateConfig,
        {"completions": ["c.csv"], "out": "d"},
    ),
    ("validate-margin", ["--out", "d"], ValidityConfig, {"out": "d"}),
    ("attribute", ["--suite", "xstest", "--out", "d"], AttributeConfig, {"out": "d"}),
    ("plausibility", ["--out", "d"], PlausibilityConfig, {"out": "d"}),
    ("heatmap", ["--from", "s", "--out", "d"], HeatmapConfig, {"source": "s", "out": "d"}),
    ("perturb", ["--suite", "xstest", "--out", "d"], PerturbConfig, {"out": "d"}),
    ("pairs", ["--pairs", "p.csv", "--out", "d"], PairsConfig, {"pairs": "p.csv", "out": "d"}),
    ("contrast", ["--out", "d"], ContrastConfig, {"out": "d"}),
    ("transplant", ["--out", "d"], TransplantConfig, {"out": "d"}),
    ("diagnose", ["--suite", "xstest", "--out", "d"], DiagnoseConfig, {"out": "d"}),
]


@pytest.mark.parametrize(("command", "flags", "config", "values"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_flag_defaults_are_the_config_defaults(command, flags, config, values):
    args = build_parser().parse_args([command, *flags])
    built = config.from_cli(args)
    expected = config(**values)
    if command == "attribute":  # --suite given: a suite selection rather than --prompt
        expected.suite = built.suite
    if command == "plausibility":  # the CLI default method list is the config's
        assert built.methods == expected.methods
    assert built == expected


def test_every_flag_shows_its_default_in_help():
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, sub in subparsers.choices.items():
        formatter = sub._get_formatter()
        for action in sub._actions:
            optional = action.option_strings and action.dest != "help" and not action.required
            if optional and "(default:" not in formatter._get_help_string(action):
                missing.append(f"{name} {action.option_strings[-1]}")
        assert "(default:" in sub.format_help() or not sub._actions[1:], name
    assert not missing, missing


def test_one_list_syntax_for_every_list_flag():
    parser = build_parser()
    base = ["perturb", "--suite", "xstest", "--out", "d"]
    forms = (
        ["--ids", "1", "2", "3"],
        ["--ids", "1,2,3"],
        ["--ids", "1", "--ids", "2,3"],
        ["--ids", "1,", "2", "3"],
    )
    assert {tuple(parser.parse_args([*base, *f]).ids) for f in forms} == {("1", "2", "3")}
    types = parser.parse_args([*base, "--type", "homonyms", "figurative_language"]).types
    assert types == parser.parse_args([*base, "--type", "homonyms,figurative_language"]).types
    given = parser.parse_args([*base, "--strategy", "user"]).strategies
    assert given == ["user"]  # given values replace the default list, they are not appended to it
    rewrites = PerturbConfig.from_cli(parser.parse_args([*base, "--rewrite", "kill=stop,end", "shoot=film"]))
    from lexprobe.toolkit.substitution.engine import parse_rewrites

    assert parse_rewrites(rewrites.rewrites) == {"kill": ["stop", "end"], "shoot": ["film"]}


@pytest.mark.parametrize(
    "flag",
    [["--ids", ","], ["--type", ""], ["--limit", "0"], ["--threads", "0"], ["--threads", "100000"]],
)
def test_empty_lists_and_non_positive_counts_are_one_line_errors(flag, error_line):
    assert main(["score", "--suite", "xstest", "--out", "d", *flag]) == 2
    line = error_line()
    assert flag[0] in line


def test_version(capsys):
    from importlib import metadata

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"lexprobe {metadata.version('lexprobe')}"


@pytest.mark.parametrize(("command", "flags", "config", "values"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_an_out_that_is_a_file_is_refused_before_any_work(
    command, flags, config, values, tmp_path, error_line
):
    taken = tmp_path / "taken"
    taken.write_text("x")
    for out, message in ((taken, "is a file"), (taken / "sub", "which is a file")):
        argv = [
            command,
            *flags[: flags.index("--out")],
            *flags[flags.index("--out") + 2 :],
            "--out",
            str(out),
        ]
        assert main(argv) == 2
        assert message in error_line()
    assert taken.read_text() == "x"


@pytest.mark.parametrize(
    ("command", "flag", "value", "message"),
    [
        ("attribute", "--tolerance", "nan", "finite"),
        ("attribute", "--tolerance", "inf", "finite"),
        ("attribute", "--tolerance", "-1", "above 0"),
        ("attribute", "--seed", "-1", "from 0"),
        ("perturb", "--seed", "-1", "from 0"),
        ("perturb", "--min-similarity", "2", "from -1 to 1"),
        ("perturb", "--min-similarity", "nan", "finite"),
    ],
)
def test_numbers_that_cannot_be_settings_are_one_line_errors(command, flag, value, message, error_line):
    """NaN would also break resume: it is not JSON, and never equals itself."""
    assert main([command, "--suite", "xstest", "--out", "d", f"{flag}={value}"]) == 2
    line = error_line()
    assert flag in line and message in line


def test_every_command_shows_an_example_that_parses(tmp_path, monkeypatch, capsys):
    """Each subcommand's --help ends with examples (`EXAMPLES`), and each example parses as written."""
    import shlex

    from lexprobe.cli import build_parser
    from lexprobe.cli.options import EXAMPLES

    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert set(commands) == set(EXAMPLES)
    for name, sub in commands.items():
        assert sub.format_help().rstrip().endswith(EXAMPLES[name][-1])
        for example in EXAMPLES[name]:
            args = parser.parse_args(shlex.split(example)[1:])
            assert args.command == name


@pytest.mark.parametrize(
    "argv, hint",
    [
        (["scroe"], "did you mean 'score'?"),
        (["score", "--model", "defualt", "--suite", "xstest", "--out", "o"], "did you mean 'default'?"),
        (["score", "--model", "tiny-random", "--suite", "xstets", "--out", "o"], "did you mean 'xstest'?"),
        (["score", "--model", "tiny-random", "--suite", "xstest", "--type", "homonym", "--out", "o"],
         "did you mean 'homonyms'?"),
        (["score", "--model", "tiny-random", "--out", "o"], "give either --prompt TEXT"),
        (["score", "--model", "tiny-random", "--suite", "xstest", "--prompt", "hi", "--out", "o"], "not both"),
        (["score", "--model", "tiny-random", "--prompt", "hi", "--type", "homonyms", "--out", "o"],
         "--type selects prompts of a --suite, not --prompt texts"),
        (["score", "--model", "tiny-random", "--suite", "xstest"], "--out DIR is required with --suite"),
        (["score", "--model", "tiny-random", "--suite", "xstest", "--limt", "3", "--out", "o"], "did you mean '--limit'?"),
        (["score", "--model", "tiny-random", "--suite", "xstest", "--system-prompt", "llama2", "--out", "o"],
         "did you mean 'llama2-original'?"),
        (["attribute", "--model", "tiny-random", "--suite", "xstest"], "--out DIR is required with --suite"),
        (["attribute", "--model", "tiny-random", "--prompt", "hi", "--limit", "2"], "--limit selects prompts of a --suite"),
        (["score", "--model", "tiny-random", "--suite", "xstest", "--chat-template", "chatmlx", "--out", "o"],
         "did you mean 'chatml'?"),
        (["attribute", "--model", "tiny-random", "--prompt", "hi", "--method", "saliencey"],
         "did you mean 'saliency'?"),
        (["generate", "--model", "tiny-random", "--suite", "xstest", "--out", "o", "--system-prompt", "nonee"],
         "did you mean 'none'?"),
        (["validate-margin", "--model", "tiny-random", "--classifier", "strmach", "--out", "o"],
         "did you mean 'strmatch'?"),
    ],
)  # fmt: skip
def test_mistyped_names_get_the_closest_one_before_any_model_loads(tmp_path, monkeypatch, capsys, argv, hint):
    from lexprobe.cli import main
    from lexprobe.toolkit.models import loader

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(loader, "_load_cached", lambda *a, **k: pytest.fail("a model was loaded"))
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err
    assert hint in err and err.count("\n") == 1


def test_method_aliases_stand_for_their_method():
    from lexprobe.analyses.attribute import parse_methods

    assert parse_methods("ig, IXG,saliency,gradshap") == [
        "integrated_gradients", "input_x_gradient", "saliency", "gradient_shap",
    ]  # fmt: skip
    assert parse_methods("ig,integrated_gradients") == ["integrated_gradients"]  # one method, once


def _fields(cls) -> dict:
    """A config's fields, nested `Options` flattened, with their defaults (`Options.from_cli` reads them
    from the flags of the same name)."""
    import dataclasses

    from lexprobe.toolkit.config import _options_type

    out = {}
    for f in dataclasses.fields(cls):
        nested = _options_type(cls, f.name)
        if nested is not None:
            out |= _fields(nested)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
        else:
            out[f.name] = f.default
    return out


def _configs() -> dict:
    """Every study command's config."""
    from lexprobe.analyses import compare, direction, harmfulness, mitigate, pathway

    others = {
        "compare": compare.CompareConfig, "direction": direction.DirectionConfig,
        "harmfulness": harmfulness.HarmfulnessConfig, "mitigate": mitigate.MitigateConfig,
        "pathway": pathway.PathwayConfig,
    }  # fmt: skip
    return {command: config for command, _, config, _ in COMMANDS} | others


INTERNAL = {"gradients", "reuse"}  # set by the study that differentiates / by diagnose, never by the user


def test_every_config_field_has_the_flag_of_its_name():
    """One source per option: `Options.from_cli` fills a field from the flag whose dest is its name, so
    a field without one would silently keep its default on the command line."""
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    configs = _configs()
    study_commands = {n for n, p in subparsers.choices.items() if p.get_default("func") and p._actions[1:]}
    assert study_commands - {"suites", "methods", "templates"} <= set(configs)
    for command, config in configs.items():
        dests = {a.dest for a in subparsers.choices[command]._actions}
        missing = sorted(set(_fields(config)) - dests - INTERNAL)
        assert not missing, f"{command}: {config.__name__} fields without a flag: {missing}"


def test_the_api_keywords_are_config_fields_with_the_configs_defaults():
    """`Probe.score(..., limit=...)` and `--limit` are one option: same name, same default."""
    import inspect

    from lexprobe import api

    configs = _configs()
    checked = 0
    for method in ("score", "generate", "attribute", "perturb", "pairs", "contrast", "diagnose", "direction",
                   "harmfulness", "pathway", "mitigate"):  # fmt: skip
        fields = _fields(configs[method])
        for name, param in inspect.signature(getattr(api.Probe, method)).parameters.items():
            if param.kind is not param.KEYWORD_ONLY:
                continue
            assert name in fields, f"Probe.{method}({name}=...) is no field of {configs[method].__name__}"
            api_default, default = param.default, fields[name]
            if isinstance(api_default, tuple):
                api_default = list(api_default)
            assert api_default == default or (api_default is None and default in ([], None)), (method, name)
            checked += 1
    assert checked >= 40


def test_flag_fields_names_every_flag_whose_field_is_not_its_own_name():
    """`toolkit.config.FLAG_FIELDS` (how the API names a flag in an error) is the parser's own mapping."""
    from lexprobe.toolkit.config import FLAG_FIELDS, field_of

    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    irregular = set()
    for command, parser in subparsers.choices.items():
        for action in parser._actions:
            for flag in action.option_strings:
                if not flag.startswith("--") or flag == "--help":
                    continue
                named = field_of("--" + flag[5:]) if flag.startswith("--no-") else field_of(flag)
                if (command, flag) in {("diagnose", "--contrasts"), ("score", "--prompt")}:
                    continue  # the API takes these as `attribute_contrasts=` and its `prompts` argument
                assert named == action.dest, f"{command} {flag} sets {action.dest}, not {named}"
                irregular |= (
                    {flag} if flag[2:].replace("-", "_") != action.dest and "--no-" not in flag else set()
                )
    assert irregular == set(FLAG_FIELDS)  # no stale entries


def test_score_prompt_without_out_prints_the_margins_and_writes_nothing(
    tmp_path, monkeypatch, capsys, tiny_readout_file
):
    from lexprobe.cli import main

    monkeypatch.chdir(tmp_path)
    argv = [
        "score",
        "--model",
        "tiny-random",
        "--readout",
        str(tiny_readout_file),
        "--prompt",
        "How do I kill a process?",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "How do I kill a process?" in out and "wrote" not in out
    assert list(tmp_path.iterdir()) == []
