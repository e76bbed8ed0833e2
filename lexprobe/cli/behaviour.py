"""`lexprobe classify`, `evaluate` and `validate-margin`: behaviour, and how well the margin predicts it."""

from __future__ import annotations

from lexprobe.cli.options import (
    ListAction,
    add_model_args,
    add_out_args,
    add_suite_args,
    out_dir,
    positive_int,
    seed,
)


def cmd_classify(a) -> None:
    from lexprobe.analyses.evaluate import ClassifyConfig, run_classify

    result = run_classify(ClassifyConfig.from_cli(a))
    counts = result.frame["predicted"].value_counts().to_dict()
    print(f"wrote {a.out}/classified.csv ({len(result.frame)} rows; {counts})")


def cmd_evaluate(a) -> None:
    from lexprobe.analyses.evaluate import EvaluateConfig, run_evaluate
    from lexprobe.toolkit.io.console import print_table

    result = run_evaluate(EvaluateConfig.from_cli(a))
    print_table(result.frame, title=f"% of responses by label ({a.label_column})")
    for model, agree in result.agreements.items():
        print(
            f"{model}: binary agreement {agree['binary_agreement']:.3f}, 3-way accuracy "
            f"{agree['accuracy_3way']:.3f}, macro-F1 {agree['macro_f1_3way']:.3f}"
        )
        print(agree["confusion"].to_string())
    print(f"wrote {a.out}/table.csv and {a.out}/table.png")


def cmd_validate_margin(a) -> None:
    from lexprobe.analyses.margin_validity import ValidityConfig, run

    s = run(ValidityConfig.from_cli(a)).summary
    print(
        f"AUROC {s['auroc']:.3f} (95% CI {s['auroc_ci95'][0]:.3f}-{s['auroc_ci95'][1]:.3f}) over {s['n']} prompts, "
        f"{100 * s['refusal_rate']:.1f}% refused; threshold {s['threshold']:.2f} "
        f"(accuracy {s['accuracy_at_threshold']:.3f}); wrote {a.out}/validity.csv, summary.json, reliability.png"
    )


def register(sub) -> None:
    p = sub.add_parser("classify", help="label completions full_compliance / full_refusal / partial_refusal")
    p.add_argument(
        "--completions",
        required=True,
        metavar="FILE",
        help="a completions file (CSV/JSONL/Parquet) or a bundled set",
    )
    p.add_argument(
        "--classifier", default="default", help="default | strmatch | rules | judge (see `lexprobe methods`)"
    )
    p.add_argument(
        "--judge-model",
        default=None,
        metavar="M",
        help="--classifier judge: the chat model that judges, any --model spec (none: the embedded model)",
    )
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("evaluate", help="XSTest's results table from labelled completions")
    p.add_argument(
        "--completions",
        action=ListAction,
        required=True,
        metavar="FILE",
        help="one file per model, or the bundled xstest-llama2orig / xstest-mistralguard",
    )
    p.add_argument("--label-column", default="final_label", help="final_label (human) or predicted")
    p.add_argument(
        "--compare-column",
        default=None,
        help="a second label column to check against --label-column (none: predicted, if present)",
    )
    p.add_argument(
        "--type", dest="types", action=ListAction, default=[], metavar="T", help="only these prompt types"
    )
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("validate-margin", help="how well the margin predicts real (greedy) refusals")
    add_model_args(p)
    add_suite_args(p, required=False, default="xstest")
    p.add_argument(
        "--completions",
        default=None,
        metavar="FILE",
        help="completions of this model and condition (none: generated, resumable in --out)",
    )
    p.add_argument("--classifier", default="default", help="labels the completions (see `lexprobe methods`)")
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=128, metavar="N", help="tokens per completion"
    )
    p.add_argument(
        "--no-save", dest="save", action="store_false", help="don't store the threshold for later studies"
    )
    p.add_argument(
        "--bootstrap",
        dest="n_bootstrap",
        type=positive_int,
        default=2000,
        metavar="N",
        help="bootstrap resamples behind the AUROC's confidence interval",
    )
    p.add_argument("--seed", type=seed, default=0, help="bootstrap seed")
    p.add_argument(
        "--out",
        type=out_dir,
        required=True,
        metavar="DIR",
        help="output directory (its score and generate steps resume)",
    )
    p.set_defaults(func=cmd_validate_margin)
