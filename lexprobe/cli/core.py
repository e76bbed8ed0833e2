"""`lexprobe score`, `generate`, `suites` and `methods`."""

from __future__ import annotations

from lexprobe.cli.options import (
    add_harmfulness_arg,
    add_model_args,
    add_out_args,
    add_parallel_args,
    add_suite_args,
    positive_int,
)


def cmd_score(a) -> None:
    from lexprobe.analyses.score import ScoreConfig, run
    from lexprobe.toolkit.io.console import print_table
    from lexprobe.toolkit.io.progress import count

    suite = prompts_suite(a)
    if suite is None and a.out is None:
        from lexprobe.toolkit.errors import InputError

        raise InputError(
            "--out DIR is required with --suite (with --prompt it may be left out: nothing is written)"
        )
    result = run(ScoreConfig.from_cli(a), suite=suite)
    if suite is not None:  # a few prompts of one's own: their margins, not a per-type summary
        columns = ["id", "prompt", "margin", "p_refuse"]
        print_table(result.frame[columns], title=f"refusal margin ({result.run['model_spec']})")
    else:
        print_table(result.summary(), title=f"refusal margin by prompt type ({result.run['model_spec']})")
    separation = result.separation()
    if separation:
        named = {"margin": "the refusal margin", "harmfulness": "the harmfulness probe"}
        print(
            "AUROC, unsafe against safe prompts: "
            + "; ".join(f"{named[k]} {v:.3f}" for k, v in separation.items())
        )
    if a.out:
        print(
            f"wrote {a.out}/scores.csv ({count(len(result.frame), 'prompt')}, {result.run['wall_seconds']} s)"
        )


def prompts_suite(a):
    """The suite of `--prompt` texts (ids 1, 2, ...), or None for `--suite`; one of the two is given."""
    from lexprobe.toolkit.errors import InputError

    prompts, suite = a.prompts, a.suite
    if bool(prompts) == (suite is not None):
        raise InputError("give either --prompt TEXT (one or more) or --suite S, not both or neither")
    refuse_selection(a, prompts)
    if not prompts:
        return None
    if any(not p.strip() for p in prompts):
        raise InputError("--prompt is empty: give the text to score")
    import pandas as pd

    from lexprobe.toolkit.io.suites import suite_from_frame

    return suite_from_frame(pd.DataFrame({"prompt": prompts}), "prompt", "command line")


def refuse_selection(a, prompts) -> None:
    """--type, --ids and --limit select prompts of a --suite: given with --prompt texts, an InputError."""
    from lexprobe.toolkit.errors import InputError

    chosen = [f for f, v in (("--type", a.types), ("--ids", a.ids), ("--limit", a.limit)) if v]
    if prompts and chosen:
        verb = "selects" if len(chosen) == 1 else "select"
        raise InputError(f"{', '.join(chosen)} {verb} prompts of a --suite, not --prompt texts")


def cmd_generate(a) -> None:
    from lexprobe.analyses.generate import GenerateConfig, run

    result = run(GenerateConfig.from_cli(a))
    print(f"wrote {a.out}/completions.csv ({len(result.frame)} completions, {result.run['wall_seconds']} s)")


def cmd_suites(_a) -> None:
    import pandas as pd

    from lexprobe.toolkit.io.console import print_table
    from lexprobe.toolkit.io.suites import list_suites

    print_table(
        pd.DataFrame(list_suites(), columns=["name", "prompts", "description"]), title="bundled suites"
    )


def cmd_methods(_a) -> None:
    import pandas as pd

    from lexprobe.analyses.attribute import METHOD_ALIASES
    from lexprobe.toolkit.attribution import ATTRIBUTION_METHODS
    from lexprobe.toolkit.behaviour.classify import CLASSIFIERS
    from lexprobe.toolkit.io.console import print_table
    from lexprobe.toolkit.substitution.engine import SUBSTITUTION_STRATEGIES

    rows = [("attribution method", n) for n in ATTRIBUTION_METHODS.names()]
    rows += [("attribution method alias", f"{a} = {n}") for a, n in METHOD_ALIASES.items()]
    rows += [("classifier", n) for n in CLASSIFIERS.names()]
    rows += [("substitution strategy", n) for n in SUBSTITUTION_STRATEGIES.names()]
    print_table(pd.DataFrame(rows, columns=["kind", "name"]), title="registered methods")


def cmd_templates(_a) -> None:
    import pandas as pd

    from lexprobe.toolkit.io.console import print_table
    from lexprobe.toolkit.models.templates import ALIASES, FAMILIES

    rows = [
        (name, ", ".join(a for a, n in ALIASES.items() if n == name), what)
        for name, (what, _) in FAMILIES.items()
    ]
    print_table(
        pd.DataFrame(rows, columns=["name", "also", "what it is"]),
        title="chat templates for --chat-template (or give a Jinja file)",
    )


def register(sub) -> None:
    p = sub.add_parser("score", help="refusal margin of every prompt of a suite, or of --prompt texts")
    add_model_args(p)
    add_suite_args(p, required=False)
    p.add_argument(
        "--prompt",
        dest="prompts",
        action="append",
        metavar="TEXT",
        help="a prompt to score, instead of --suite (repeatable)",
    )
    add_out_args(p, required=False)
    p.epilog = "With --prompt and no --out the margins are printed and nothing is written."
    p.add_argument("--layers", action="store_true", help="also write the per-layer (logit lens) margin")
    add_harmfulness_arg(p)
    add_parallel_args(p)
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("generate", help="greedy completions for a suite (resumable)")
    add_model_args(p)
    add_suite_args(p)
    add_out_args(p)
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=128, metavar="N", help="tokens per completion"
    )
    add_parallel_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("suites", help="list the bundled prompt suites")
    p.set_defaults(func=cmd_suites)

    p = sub.add_parser(
        "methods", help="list the attribution methods, classifiers and substitution strategies"
    )
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("templates", help="list the chat template families --chat-template knows")
    p.set_defaults(func=cmd_templates)
