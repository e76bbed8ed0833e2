"""`lexprobe compare`: models x system-prompt conditions x suites from one config file, in one report."""

from __future__ import annotations

from lexprobe.cli.options import add_out_args, add_parallel_args, plain


def cmd_compare(a) -> None:
    from lexprobe.analyses.compare import CompareConfig, run
    from lexprobe.toolkit.io.console import print_table
    from lexprobe.toolkit.io.progress import count

    result = run(CompareConfig.from_cli(a))
    cols = ["model", "condition", "suite", "safe_refusal_rate", "unsafe_refusal_rate", "auroc"]
    cols += [c for c in ("harmfulness_auroc", "lexical_over_refusal_index") if c in result.cells]
    print_table(result.cells[cols], title="refusal rates per cell (refused = margin > 0)")
    print(
        plain(
            f"wrote {a.out}/report.html, cells.csv, types.csv ({count(len(result.cells), 'cell')}, {result.wall_seconds} s)"
        )
    )


def register(sub) -> None:
    p = sub.add_parser(
        "compare", help="models x system-prompt conditions x suites from a TOML/YAML config, in one report"
    )
    p.add_argument(
        "--config", required=True, metavar="FILE", help="the plan (see examples/compare_default.toml)"
    )
    p.add_argument(
        "--steer",
        default=None,
        metavar="FILE",
        help="apply a fix `lexprobe mitigate` chose (its chosen.json) to every cell (or the plan's `steer`)",
    )
    add_out_args(p)
    add_parallel_args(p)
    p.set_defaults(func=cmd_compare)
