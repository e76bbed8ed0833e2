"""`lexprobe perturb`, `pairs`, `contrast` and `transplant`: minimal pairs and their statistics."""

from __future__ import annotations

from lexprobe.cli.options import (
    ListAction,
    add_harmfulness_arg,
    add_model_args,
    add_out_args,
    add_parallel_args,
    add_substitution_args,
    add_suite_args,
    positive_int,
    seed,
    similarity,
)


def _ci(table) -> list[str]:
    return [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(table["ci_low"], table["ci_high"])]


def cmd_perturb(a) -> None:
    from lexprobe.analyses.minimal_pairs import PerturbConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(PerturbConfig.from_cli(a))
    t = result.tables
    if len(t["triggers"]):
        tr = t["triggers"]
        view = tr[["label", "trigger", "n", "mean_delta"]].assign(
            ci=_ci(tr), q=tr["q"], flips=tr["flip_rate"], control=tr["control_mean_delta"]
        )
        print_table(view, title="trigger knockout: margin change (variant - original), 95% CI")
    if len(t["pooled"]):
        po = t["pooled"]
        view = po[["label", "contrast", "n", "mean"]].assign(ci=_ci(po), p=po["p"], flips=po["flip_rate"])
        print_table(view, title="pooled")
    if "attribution_agreement" in t:
        print_table(t["attribution_agreement"], title="attribution vs substitution effect (Spearman)")
    print(
        f"wrote {a.out}/substitutions.csv ({len(result.frame)} variants), words.csv, controls.csv, "
        f"triggers.csv, pooled.csv ({result.run['wall_seconds']} s)"
    )


def cmd_pairs(a) -> None:
    import pandas as pd

    from lexprobe.analyses.minimal_pairs import PairsConfig, run_pairs
    from lexprobe.toolkit.io.console import print_table

    result = run_pairs(PairsConfig.from_cli(a))
    summary = result.tables["summary"].iloc[0]
    print_table(
        pd.DataFrame({"statistic": summary.index, "value": summary.to_numpy(dtype=float)}),
        title="margin_b - margin_a over the pairs",
    )
    print(f"wrote {a.out}/pairs.csv ({len(result.frame)} pairs, {result.run['wall_seconds']} s)")


def cmd_contrast(a) -> None:
    from lexprobe.analyses.contrast import ContrastConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(ContrastConfig.from_cli(a))
    cols = [
        "type",
        "n_pairs",
        "mean_gap",
        "ci_low",
        "ci_high",
        "q",
        "auroc",
        "dir_pass_rate",
        "inv_pass_rate",
    ]
    print_table(result.tables["types"][cols], title="safe prompts vs their unsafe contrasts")
    print(f"wrote {a.out}/contrast_pairs.csv, types.csv, inv.csv ({result.run['wall_seconds']} s)")


def cmd_transplant(a) -> None:
    from lexprobe.analyses.transplant import TransplantConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(TransplantConfig.from_cli(a))
    print_table(result.tables["dose"], title="margin by number of trigger words in a carrier list")
    print_table(result.tables["trend"], title="dose response")
    print(f"wrote {a.out}/transplant.csv, dose.csv, words.csv, trend.csv ({result.run['wall_seconds']} s)")


def add_pair_map_arg(p) -> None:
    p.add_argument(
        "--pair-map", default=None, metavar="FILE", help="CSV of safe_id, unsafe_id (none: XSTest's)"
    )


def register(sub) -> None:
    p = sub.add_parser("perturb", help="word knockout sweep: substitute each content word, paired statistics")
    add_model_args(p)
    add_suite_args(p)
    add_out_args(p)
    add_substitution_args(p)
    add_harmfulness_arg(p)
    p.add_argument("--attributions", default=None, metavar="FILE", help="attributions.csv to correlate with")
    p.add_argument("--seed", type=seed, default=0, help="bootstrap seed")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_parallel_args(p)
    p.set_defaults(func=cmd_perturb)

    p = sub.add_parser("pairs", help="margins of user-given prompt pairs (a file with prompt_a, prompt_b)")
    add_model_args(p)
    add_harmfulness_arg(p)
    p.add_argument(
        "--pairs", required=True, metavar="FILE", help="CSV/TSV/JSONL/Parquet with prompt_a, prompt_b"
    )
    p.add_argument("--seed", type=seed, default=0, help="bootstrap seed")
    add_out_args(p)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser(
        "contrast", help="XSTest safe prompts vs their unsafe contrasts (gap, AUROC, INV, DIR)"
    )
    add_model_args(p)
    add_suite_args(p, required=False, default="xstest")
    add_pair_map_arg(p)
    add_harmfulness_arg(p)
    p.add_argument("--no-inv", dest="inv", action="store_false", help="skip the INV synonym-swap test")
    p.add_argument("--inv-per-prompt", type=positive_int, default=1, help="INV swaps per safe prompt")
    p.add_argument(
        "--min-similarity", type=similarity, default=0.7, help="MiniLM similarity an INV swap must keep"
    )
    p.add_argument("--seed", type=seed, default=0, help="bootstrap seed")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_contrast)

    p = sub.add_parser("transplant", help="trigger words in neutral carrier requests: dose response")
    add_model_args(p)
    p.add_argument(
        "--categories",
        action=ListAction,
        default=["violence", "drugs", "crime"],
        metavar="C",
        help="trigger categories of the lexicon",
    )
    p.add_argument("--draws", type=positive_int, default=6, help="random word lists per carrier and dose")
    p.add_argument(
        "--word-carriers", type=int, default=3, help="carriers for the one-word design (0: skip it)"
    )
    p.add_argument(
        "--lexicon", default=None, metavar="FILE", help="a trigger lexicon JSON instead of the bundled one"
    )
    p.add_argument("--seed", type=seed, default=0, help="random seed")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_transplant)
