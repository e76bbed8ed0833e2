"""`lexprobe attribute`, `plausibility` and `heatmap`: which words push a prompt toward refusal."""

from __future__ import annotations

from lexprobe.cli.options import (
    ListAction,
    add_attribution_args,
    add_faithfulness_args,
    add_harmfulness_arg,
    add_model_args,
    add_out_args,
    add_parallel_args,
    add_suite_args,
    out_dir,
    positive_int,
)

FIGURE_FORMATS = ["html", "png", "svg", "pdf"]


def cmd_attribute(a) -> None:
    from lexprobe.analyses.attribute import AttributeConfig, run
    from lexprobe.cli.core import refuse_selection
    from lexprobe.toolkit.errors import InputError
    from lexprobe.toolkit.io.console import print_table
    from lexprobe.toolkit.io.progress import count
    from lexprobe.toolkit.viz.heatmaps import print_terminal

    refuse_selection(a, a.prompt)
    if a.suite is not None and a.out is None:
        raise InputError(
            "--out DIR is required with --suite (with --prompt it may be left out: nothing is written)"
        )
    result = run(AttributeConfig.from_cli(a))
    if a.prompt is not None:
        print_terminal(result)
    by_type = result.faithfulness_by_type()
    if len(by_type):
        cols = ["type", "method", "n", "top1_drop", "top1_drop_random", "no_better_than_random"]
        print_table(
            by_type[cols], title="faithfulness: margin drop when the top word is removed, vs a random word"
        )
    if len(result.method_names) > 1:
        print_table(result.agreement(), title="rank agreement between methods")
    if result.ig_summary():
        print(result.ig_summary())
    if a.out:
        figures = ", heatmap.html, heatmap.png" if a.figures else ""
        print(
            f"wrote {a.out}/attributions.csv{figures} ({count(len(result.prompts), 'prompt')}, "
            f"{result.run['wall_seconds']} s)"
        )


def cmd_plausibility(a) -> None:
    from lexprobe.analyses.plausibility import PlausibilityConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(PlausibilityConfig.from_cli(a))
    print_table(result.frame, title="top word = focus word (lemma match), vs a random word of the prompt")
    print(f"wrote {a.out}/plausibility.csv, plausibility_by_type.csv, hits.csv and {a.out}/attributions/")


def cmd_heatmap(a) -> None:
    from lexprobe.analyses.attribute import HeatmapConfig, redraw

    written = redraw(HeatmapConfig.from_cli(a))
    print(f"wrote {', '.join(str(p) for p in written)}")


def register(sub) -> None:
    p = sub.add_parser("attribute", help="which words push a prompt toward refusal (heatmaps, faithfulness)")
    add_model_args(p)
    add_suite_args(p, required=False)
    p.add_argument(
        "--prompt", action="append", default=None, metavar="TEXT",
        help="a prompt to attribute, instead of --suite (repeatable)",
    )  # fmt: skip
    add_attribution_args(p, ["integrated_gradients"])
    add_faithfulness_args(p)
    add_harmfulness_arg(p)
    add_parallel_args(p)
    p.add_argument(
        "--contrasts", action="store_true", help="add the paired unsafe contrast of each safe prompt"
    )
    p.add_argument(
        "--pair-map", default=None, metavar="FILE", help="CSV of safe_id, unsafe_id (none: XSTest's)"
    )
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no heatmaps or figures")
    add_out_args(p, required=False)
    p.epilog = "With --prompt and no --out the heatmap is printed and nothing is written."
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser(
        "plausibility", help="how often each method's top word is a refused safe prompt's focus word"
    )
    add_model_args(p)
    p.add_argument("--suite", default="xstest", help="a suite with a `focus` column")
    p.add_argument(
        "--per-type", type=positive_int, default=None, metavar="N", help="at most N refused prompts per type"
    )
    p.add_argument("--faithfulness", action="store_true", help="also measure faithfulness (slower)")
    add_attribution_args(p, ["integrated_gradients"])
    p.add_argument(
        "--out", type=out_dir, required=True, metavar="DIR", help="output directory (rerun to continue)"
    )
    p.set_defaults(func=cmd_plausibility)

    p = sub.add_parser("heatmap", help="redraw the heatmaps of a `lexprobe attribute` output directory")
    p.add_argument(
        "--from", dest="source", required=True, metavar="DIR", help="a `lexprobe attribute` output directory"
    )
    p.add_argument(
        "--ids", action=ListAction, default=[], metavar="ID", help="only these prompt ids, in this order"
    )
    p.add_argument(
        "--method",
        dest="methods",
        action=ListAction,
        default=[],
        metavar="M",
        help="methods to draw (none: all)",
    )
    p.add_argument(
        "--format",
        dest="formats",
        action=ListAction,
        default=["html", "png"],
        metavar="F",
        help="html, png, svg, pdf",
    )
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_heatmap)
