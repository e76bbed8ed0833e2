"""`lexprobe diagnose`: margins, attribution and substitution of a prompt selection in one report.

Kept beside `toolkit/cli.py` (which calls `add_diagnose_command`), built from its shared flag helpers
and those of the attribution and minimal-pair subcommands, so every knob keeps its usual name."""

from __future__ import annotations

from lexprobe.toolkit.cli import (
    add_attribution_args,
    add_model_args,
    add_out_args,
    add_suite_args,
    attribution_settings,
    model_options,
    suite_options,
)
from lexprobe.toolkit.cli_minimal_pairs import _comma_list, add_substitution_args


def cmd_diagnose(a) -> None:
    from lexprobe.analyses.attribute import parse_methods
    from lexprobe.analyses.diagnose import DiagnoseConfig, run

    cfg = DiagnoseConfig(
        a.out,
        model_options(a),
        suite_options(a),
        pair_map=a.pair_map,
        attribution=not a.no_attribution,
        methods=parse_methods(a.method) if not a.no_attribution else [],
        settings=attribution_settings(a),
        faithfulness=not a.no_faithfulness,
        n_random=a.random_orders,
        attribute_contrasts=a.contrasts,
        perturb=not a.no_perturb,
        strategies=_comma_list(a.strategy) or ["lexicon", "auto"],
        rewrites=a.rewrite,
        lexicon=a.lexicon,
        min_similarity=a.min_similarity,
        per_word=a.per_word,
        content_words=a.content_words,
        top=a.top,
        seed=a.seed,
        resume=a.resume,
        overwrite=a.overwrite,
    )
    result = run(cfg)
    print("\n".join(result.summary["verdict"]))
    print(f"wrote {a.out}/report.html, summary.json and CSVs ({result.summary['wall_seconds']} s)")


def add_diagnose_command(sub) -> None:
    p = sub.add_parser(
        "diagnose", help="why a prompt type gets refused: margins, attribution, word swaps in one report"
    )
    add_model_args(p)
    add_suite_args(p)
    add_out_args(p)
    p.add_argument(
        "--pair-map", default=None, metavar="FILE", help="CSV of safe_id, unsafe_id (default: XSTest's)"
    )
    p.add_argument("--no-attribution", action="store_true", help="skip the attribution step")
    p.add_argument("--no-perturb", action="store_true", help="skip the word-substitution sweep")
    p.add_argument("--top", type=int, default=15, help="rows of the word-swap table in the report")
    add_attribution_args(p, method="saliency,occlusion")
    add_substitution_args(p)
    p.set_defaults(func=cmd_diagnose)
