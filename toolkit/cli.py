"""`lexprobe` subcommands. Thin: parse flags into an analysis config, run it, print, set the exit code.

Exit codes: 0 done, 2 bad input (one line on stderr naming the problem and the fix), 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from lexprobe.toolkit.errors import LexprobeError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, like every other bad input
        sys.stderr.write(f"lexprobe: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)


# ------------------------------------------------------------------------------------ shared flags
def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model", default="default", help="default | tiny-random | HF dir | cached hub id | .gguf"
    )
    g.add_argument(
        "--system-prompt",
        default="model-default",
        metavar="P",
        help="none | model-default | llama2-original | mistral-guardrail | @file.txt | custom text",
    )
    g.add_argument(
        "--dtype",
        default="auto",
        help="float32 | bfloat16 | float16 | auto (default: float32 on CPU, bf16 on CUDA unless attributing)",
    )
    g.add_argument("--device", default="auto", help="cpu | cuda | auto")
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: all cores; 1 is faster when other jobs share the CPU)",
    )
    g.add_argument("--weights-sha256", default=None, help="refuse weights whose sha256 differs")
    g.add_argument(
        "--readout",
        default=None,
        metavar="FILE",
        help="refusal readout JSON to use instead of calibrating one (probes/readout.py)",
    )


def add_suite_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("suite")
    g.add_argument(
        "--suite", required=required, help="bundled name (see `lexprobe suites`) or a CSV/JSONL/Parquet file"
    )
    g.add_argument(
        "--type",
        dest="types",
        action="append",
        default=[],
        metavar="T",
        help="only this prompt type (repeatable, or comma-separated)",
    )
    g.add_argument("--ids", nargs="+", default=[], help="only these prompt ids")
    g.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    g.add_argument("--prompt-column", default="prompt")
    g.add_argument("--id-column", default="id")
    g.add_argument("--type-column", default="type")
    g.add_argument("--label-column", default="label")


def add_out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--resume", action="store_true", help="keep rows already in --out and do the rest")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def model_options(a):
    from lexprobe.analyses.common import ModelOptions

    return ModelOptions(
        a.model, a.system_prompt, a.dtype, a.device, a.weights_sha256, a.batch_size, a.readout
    )


def suite_options(a):
    from lexprobe.analyses.common import SuiteOptions

    types = [t.strip() for arg in a.types for t in arg.split(",") if t.strip()]
    return SuiteOptions(
        a.suite, types, a.ids, a.limit, a.prompt_column, a.id_column, a.type_column, a.label_column
    )


# ------------------------------------------------------------------------------------ commands
def cmd_score(a) -> None:
    from lexprobe.analyses.score import ScoreConfig, run
    from lexprobe.toolkit.console import print_table

    result = run(ScoreConfig(a.out, model_options(a), suite_options(a), a.layers, a.resume, a.overwrite))
    print_table(result.summary(), title=f"refusal margin by prompt type ({result.run['model_spec']})")
    print(f"wrote {a.out}/scores.csv ({len(result.frame)} prompts, {result.run['wall_seconds']} s)")


def cmd_generate(a) -> None:
    from lexprobe.analyses.generate import GenerateConfig, run

    cfg = GenerateConfig(a.out, model_options(a), suite_options(a), a.max_new_tokens, a.resume, a.overwrite)
    result = run(cfg)
    print(f"wrote {a.out}/completions.csv ({len(result.frame)} completions, {result.run['wall_seconds']} s)")


def cmd_classify(a) -> None:
    from lexprobe.analyses.evaluate import ClassifyConfig, run_classify

    result = run_classify(ClassifyConfig(a.completions, a.out, a.classifier))
    counts = result.frame["predicted"].value_counts().to_dict()
    print(f"wrote {a.out} ({len(result.frame)} rows; {counts})")


def cmd_evaluate(a) -> None:
    from lexprobe.analyses.evaluate import EvaluateConfig, run_evaluate
    from lexprobe.toolkit.console import print_table

    types = [t.strip() for arg in a.types for t in arg.split(",") if t.strip()]
    result = run_evaluate(EvaluateConfig(a.completions, a.out, a.label_column, a.compare_column, types))
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

    cfg = ValidityConfig(
        a.out,
        model_options(a),
        suite_options(a),
        a.completions,
        a.classifier,
        a.max_new_tokens,
        save=not a.no_save,
    )
    s = run(cfg).summary
    print(
        f"AUROC {s['auroc']:.3f} (95% CI {s['auroc_ci95'][0]:.3f}-{s['auroc_ci95'][1]:.3f}) over {s['n']} prompts, "
        f"{100 * s['refusal_rate']:.1f}% refused; threshold {s['threshold']:.2f} "
        f"(accuracy {s['accuracy_at_threshold']:.3f}); wrote {a.out}/validity.csv, summary.json, reliability.png"
    )


def cmd_attribute(a) -> None:
    from lexprobe.analyses.attribute import run
    from lexprobe.toolkit.console import print_table

    result = run(attribute_config(a))
    if a.prompt is not None:
        from lexprobe.toolkit.viz import print_terminal

        print_terminal(result)
    by_type = result.faithfulness_by_type()
    if len(by_type):
        cols = ["type", "method", "n", "top1_drop", "top1_drop_random", "no_better_than_random"]
        print_table(
            by_type[cols], title="faithfulness: margin drop when the top word is removed, vs a random word"
        )
    if len(result.method_names) > 1:
        print_table(result.agreement(), title="rank agreement between methods")
    ig = result.methods[result.methods["method"] == "integrated_gradients"] if len(result.methods) else None
    if ig is not None and len(ig):
        print(
            f"integrated gradients: completeness error max {ig['completeness_error'].max():.4f}, "
            f"median {ig['completeness_error'].median():.4f}, steps median {int(ig['steps'].median())}"
        )
    print(
        f"wrote {a.out}/attributions.csv, heatmap.html, heatmap.png ({len(result.prompts)} prompts, "
        f"{result.run['wall_seconds']} s)"
    )


def attribute_config(a):
    from lexprobe.analyses.attribute import AttributeConfig, parse_methods

    return AttributeConfig(
        a.out,
        model_options(a),
        suite_options(a) if a.suite is not None else None,
        a.prompt,
        parse_methods(a.method),
        attribution_settings(a),
        not a.no_faithfulness,
        a.random_orders,
        a.contrasts,
        True,
        a.resume,
        a.overwrite,
    )


def attribution_settings(a):
    from lexprobe.toolkit.attribution import AttributionSettings

    return AttributionSettings(
        target=a.target,
        n_steps=a.steps,
        max_steps=a.max_steps,
        tolerance=a.tolerance,
        rule=a.ig_rule,
        baseline=a.baseline,
        n_samples=a.samples,
        replacement=a.replacement,
        group_phrases=a.group_phrases,
        batch_size=a.batch_size,
        seed=a.seed,
    )


def add_attribution_args(p: argparse.ArgumentParser, method: str = "integrated_gradients") -> None:
    g = p.add_argument_group("attribution")
    g.add_argument("--method", default=method, help=f"a method, a comma list, or all (default: {method})")
    g.add_argument(
        "--target",
        default="smooth",
        help="which margin to explain: smooth (default: the decision margin without its steps) | decision | sampled",
    )
    g.add_argument("--steps", type=int, default=16, help="integrated gradients: first uniform steps")
    g.add_argument("--max-steps", type=int, default=256, help="integrated gradients: refine up to this")
    g.add_argument("--tolerance", type=float, default=0.05, help="IG completeness error to reach")
    g.add_argument("--ig-rule", default="adaptive", help="adaptive | trapezoid | gausslegendre")
    g.add_argument("--baseline", default="pad", help="IG reference for the user tokens: pad | zero")
    g.add_argument("--samples", type=int, default=None, help="shapley/kernel_shap/lime/gradient_shap samples")
    g.add_argument(
        "--replacement", default=None, help="perturbations put this text in a removed word's place"
    )
    g.add_argument("--group-phrases", action="store_true", help='treat "blow up" as one word')
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-faithfulness", action="store_true", help="skip the faithfulness measures")
    g.add_argument("--random-orders", type=int, default=3, help="random orders behind the random ranking")
    g.add_argument(
        "--contrasts", action="store_true", help="add the paired unsafe contrast of each safe prompt"
    )


def cmd_plausibility(a) -> None:
    from lexprobe.analyses.attribute import parse_methods
    from lexprobe.analyses.plausibility import PlausibilityConfig, run
    from lexprobe.toolkit.console import print_table

    cfg = PlausibilityConfig(
        a.out,
        model_options(a),
        a.suite,
        parse_methods(a.method),
        attribution_settings(a),
        a.per_type,
        a.faithfulness,
    )
    result = run(cfg)
    print_table(result.summary, title="top word = focus word (lemma match), vs a random word of the prompt")
    print(f"wrote {a.out}/plausibility.csv, plausibility_by_type.csv, hits.csv and {a.out}/attributions/")


def cmd_heatmap(a) -> None:
    from lexprobe.toolkit import viz
    from lexprobe.toolkit.attribution.result import AttributionResult

    if not (Path(a.source) / "attributions.csv").exists():
        raise LexprobeError(
            f"'{a.source}' holds no attributions.csv: give a `lexprobe attribute` output directory"
        )
    result = AttributionResult.load(a.source)
    if a.ids:
        missing = sorted(set(a.ids) - set(result.prompts["id"]))
        if missing:
            raise LexprobeError(f"'{a.source}' has no prompt id {', '.join(missing[:5])}: check --ids")
        result = result.select(a.ids)
    method = a.method or result.method_names[0]
    if method not in result.method_names:
        raise LexprobeError(f"'{a.source}' has no method '{method}': it has {', '.join(result.method_names)}")
    out = Path(a.out)
    if out.suffix.lower() not in (".png", ".html"):
        raise LexprobeError(f"--out '{out}' must end in .png or .html")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".html":
        viz.heatmap_html(result, out)
    else:
        viz.heatmap_png(result, out, method)
    print(f"wrote {out} ({len(result.prompts)} prompts)")


def cmd_suites(_a) -> None:
    import pandas as pd

    from lexprobe.toolkit.console import print_table
    from lexprobe.toolkit.suites import list_suites

    print_table(
        pd.DataFrame(list_suites(), columns=["name", "prompts", "description"]), title="bundled suites"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lexprobe", description="Why do chat models refuse safe prompts? Word by word.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("score", help="refusal margin of every prompt of a suite")
    add_model_args(p)
    add_suite_args(p)
    add_out_args(p)
    p.add_argument("--layers", action="store_true", help="also write the per-layer (logit lens) margin")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("generate", help="greedy completions for a suite (resumable)")
    add_model_args(p)
    add_suite_args(p)
    add_out_args(p)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("classify", help="label completions full_compliance / full_refusal / partial_refusal")
    p.add_argument(
        "--completions", required=True, help="completions file (CSV/JSONL/Parquet) or a bundled set"
    )
    p.add_argument("--classifier", default="default", help="default | strmatch | rules")
    p.add_argument("--out", required=True, help="output file: the same rows plus `predicted`")
    p.set_defaults(func=cmd_classify)

    p = sub.add_parser("evaluate", help="XSTest's results table from labelled completions")
    p.add_argument(
        "--completions",
        nargs="+",
        required=True,
        help="one file per model, or bundled xstest-llama2orig / xstest-mistralguard",
    )
    p.add_argument("--label-column", default="final_label", help="final_label (human) or predicted")
    p.add_argument(
        "--compare-column",
        default=None,
        help="a second label column to check against --label-column (default: predicted, if present)",
    )
    p.add_argument("--type", dest="types", action="append", default=[], metavar="T")
    p.add_argument("--out", required=True, help="output directory")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("validate-margin", help="how well the margin predicts real (greedy) refusals")
    add_model_args(p)
    add_suite_args(p, required=False)
    p.set_defaults(suite="xstest")
    p.add_argument(
        "--completions", default=None, help="completions of this model and condition (else generated)"
    )
    p.add_argument("--classifier", default="default")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--no-save", action="store_true", help="don't store the threshold for later studies")
    p.add_argument(
        "--out", required=True, help="output directory (resumes the score and generate steps there)"
    )
    p.set_defaults(func=cmd_validate_margin)

    p = sub.add_parser("attribute", help="which words push a prompt toward refusal (heatmaps, faithfulness)")
    add_model_args(p)
    add_suite_args(p, required=False)
    p.add_argument("--prompt", default=None, help="one prompt to attribute (instead of --suite)")
    add_attribution_args(p)
    add_out_args(p)
    p.set_defaults(func=cmd_attribute)

    p = sub.add_parser(
        "plausibility", help="how often each method's top word is a refused safe prompt's focus word"
    )
    add_model_args(p)
    p.add_argument("--suite", default="xstest", help="a suite with a `focus` column")
    p.add_argument("--per-type", type=int, default=None, help="at most N refused prompts per type")
    p.add_argument("--faithfulness", action="store_true", help="also measure faithfulness (slower)")
    add_attribution_args(p)
    p.add_argument("--out", required=True, help="output directory (resumable: rerun to continue)")
    p.set_defaults(func=cmd_plausibility)

    p = sub.add_parser("heatmap", help="redraw a heatmap (PNG or HTML) from an attribute output directory")
    p.add_argument("--from", dest="source", required=True, help="a `lexprobe attribute` output directory")
    p.add_argument("--ids", nargs="+", default=[], help="only these prompt ids (in this order)")
    p.add_argument("--method", default=None, help="the method to draw (PNG; default the first)")
    p.add_argument("--out", required=True, help="a .png or .html file")
    p.set_defaults(func=cmd_heatmap)

    from lexprobe.toolkit.cli_minimal_pairs import add_minimal_pair_commands

    add_minimal_pair_commands(sub)

    from lexprobe.toolkit.cli_diagnose import add_diagnose_command

    add_diagnose_command(sub)

    p = sub.add_parser("suites", help="list the bundled prompt suites")
    p.set_defaults(func=cmd_suites)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # lexprobe never downloads
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    args = build_parser().parse_args(argv)
    from transformers.utils import logging as hf_logging

    from lexprobe.toolkit.progress import NOTES, install_notes

    install_notes()

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if getattr(args, "threads", None):
        if args.threads < 1:
            sys.stderr.write(f"lexprobe: error: --threads must be at least 1, got {args.threads}\n")
            return 2
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.func(args)
    except LexprobeError as err:
        NOTES.drop()  # bad input: the one line that names it, nothing else
        sys.stderr.write(f"lexprobe: error: {err}\n")
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        where = f"; rows finished so far are in {out}: rerun with --resume" if out else ""
        sys.stderr.write(f"lexprobe: interrupted{where}\n")
        return 130
    NOTES.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
