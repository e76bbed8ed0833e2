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

    result = run(ScoreConfig.from_cli(a))
    print_table(result.summary(), title=f"refusal margin by prompt type ({result.run['model_spec']})")
    separation = result.separation()
    if separation:
        named = {"margin": "the refusal margin", "harmfulness": "the harmfulness probe"}
        print(
            "AUROC, unsafe against safe prompts: "
            + "; ".join(f"{named[k]} {v:.3f}" for k, v in separation.items())
        )
    print(f"wrote {a.out}/scores.csv ({len(result.frame)} prompts, {result.run['wall_seconds']} s)")


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

    from lexprobe.toolkit.attribution import ATTRIBUTION_METHODS
    from lexprobe.toolkit.behaviour.classify import CLASSIFIERS
    from lexprobe.toolkit.io.console import print_table
    from lexprobe.toolkit.substitution.engine import SUBSTITUTION_STRATEGIES

    rows = [("attribution method", n) for n in ATTRIBUTION_METHODS.names()]
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
    p = sub.add_parser("score", help="refusal margin of every prompt of a suite")
    add_model_args(p)
    add_suite_args(p)
    add_out_args(p)
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
