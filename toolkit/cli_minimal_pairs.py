"""`lexprobe perturb`, `pairs`, `contrast` and `transplant`: the minimal-pair subcommands.

Kept beside `toolkit/cli.py` (which calls `add_minimal_pair_commands`) and built from its shared flag
helpers, so the main CLI module stays small.
"""

from __future__ import annotations

import argparse

from lexprobe.toolkit.cli import add_model_args, add_out_args, add_suite_args, model_options, suite_options


def _comma_list(values: list[str]) -> list[str]:
    return [v.strip() for arg in values for v in arg.split(",") if v.strip()]


def _ci(table) -> list[str]:
    return [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(table["ci_low"], table["ci_high"])]


def cmd_perturb(a) -> None:
    from lexprobe.analyses.minimal_pairs import PerturbConfig, run
    from lexprobe.toolkit.console import print_table

    cfg = PerturbConfig(
        a.out,
        model_options(a),
        suite_options(a),
        strategies=_comma_list(a.strategy) or ["lexicon", "auto"],
        rewrites=a.rewrite,
        lexicon=a.lexicon,
        min_similarity=a.min_similarity,
        per_word=a.per_word,
        attributions=a.attributions,
        content_words=a.content_words,
        figures=not a.no_figures,
        seed=a.seed,
        resume=a.resume,
        overwrite=a.overwrite,
    )
    result = run(cfg)
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
    from lexprobe.toolkit.console import print_table

    result = run_pairs(PairsConfig(a.out, a.pairs, model_options(a), a.resume, a.overwrite))
    summary = result.tables["summary"].iloc[0]
    print_table(
        pd.DataFrame({"statistic": summary.index, "value": summary.to_numpy(dtype=float)}),
        title="margin_b - margin_a over the pairs",
    )
    print(f"wrote {a.out}/pairs.csv ({len(result.frame)} pairs, {result.run['wall_seconds']} s)")


def cmd_contrast(a) -> None:
    from lexprobe.analyses.contrast import ContrastConfig, run
    from lexprobe.toolkit.console import print_table

    cfg = ContrastConfig(
        a.out,
        model_options(a),
        suite_options(a),
        pair_map=a.pair_map,
        inv=not a.no_inv,
        inv_per_prompt=a.inv_per_prompt,
        min_similarity=a.min_similarity,
        figures=not a.no_figures,
        overwrite=a.overwrite,
    )
    result = run(cfg)
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
    from lexprobe.toolkit.console import print_table

    cfg = TransplantConfig(
        a.out,
        model_options(a),
        categories=_comma_list(a.categories) or ["violence", "drugs", "crime"],
        draws=a.draws,
        word_carriers=a.word_carriers,
        lexicon=a.lexicon,
        seed=a.seed,
        figures=not a.no_figures,
        overwrite=a.overwrite,
    )
    result = run(cfg)
    print_table(result.tables["dose"], title="margin by number of trigger words in a carrier list")
    print_table(result.tables["trend"], title="dose response")
    print(f"wrote {a.out}/transplant.csv, dose.csv, words.csv, trend.csv ({result.run['wall_seconds']} s)")


def add_substitution_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("substitution")
    g.add_argument(
        "--strategy", action="append", default=[], help="lexicon, auto, user (repeatable or comma list)"
    )
    g.add_argument(
        "--rewrite", action="append", default=[], metavar="WORD=SUB[,SUB]", help="a user rewrite (repeatable)"
    )
    g.add_argument(
        "--lexicon", default=None, metavar="FILE", help="a trigger lexicon JSON instead of the bundled one"
    )
    g.add_argument("--min-similarity", type=float, default=0.7, help="MiniLM similarity a variant must keep")
    g.add_argument("--per-word", type=int, default=1, help="substitutes kept per word")
    g.add_argument(
        "--content-words",
        type=int,
        default=None,
        metavar="N",
        help="rewrite at most N non-trigger words per prompt (a trigger's part of speech first); default all",
    )


def add_minimal_pair_commands(sub) -> None:
    p = sub.add_parser("perturb", help="word knockout sweep: substitute each content word, paired statistics")
    add_model_args(p)
    add_suite_args(p)
    add_out_args(p)
    add_substitution_args(p)
    p.add_argument("--attributions", default=None, metavar="FILE", help="attributions.csv to correlate with")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=cmd_perturb)

    p = sub.add_parser("pairs", help="margins of user-given prompt pairs (CSV with prompt_a, prompt_b)")
    add_model_args(p)
    p.add_argument(
        "--pairs", required=True, metavar="FILE", help="CSV/TSV/JSONL/Parquet with prompt_a, prompt_b"
    )
    add_out_args(p)
    p.set_defaults(func=cmd_pairs)

    p = sub.add_parser(
        "contrast", help="XSTest safe prompts vs their unsafe contrasts (gap, AUROC, INV, DIR)"
    )
    add_model_args(p)
    add_suite_args(p, required=False)
    p.set_defaults(suite="xstest")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument(
        "--pair-map", default=None, metavar="FILE", help="CSV of safe_id, unsafe_id (default: XSTest's)"
    )
    p.add_argument("--no-inv", action="store_true", help="skip the INV synonym-swap test")
    p.add_argument("--inv-per-prompt", type=int, default=1, help="INV swaps per safe prompt")
    p.add_argument(
        "--min-similarity", type=float, default=0.7, help="MiniLM similarity an INV swap must keep"
    )
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=cmd_contrast)

    p = sub.add_parser("transplant", help="trigger words in neutral carrier requests: dose response")
    add_model_args(p)
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument(
        "--categories", action="append", default=[], help="trigger categories (default violence,drugs,crime)"
    )
    p.add_argument("--draws", type=int, default=6, help="random word lists per carrier and dose")
    p.add_argument("--word-carriers", type=int, default=3, help="carriers for the one-word design (0: skip)")
    p.add_argument("--lexicon", default=None, metavar="FILE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-figures", action="store_true")
    p.set_defaults(func=cmd_transplant)
