"""The flags every command shares, one list syntax, and the parser that turns bad flags into one line.

A flag's `dest` is the name of the config field it sets (`lexprobe.toolkit.config.Options.from_cli`).
List flags take values separated by spaces or commas, and may be repeated: `--ids 1 2`, `--ids 1,2` and
`--ids 1 --ids 2` are the same.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from lexprobe.toolkit.config import (  # noqa: F401  (the flags' types: one set for the CLI and the API)
    _number,
    ablate_share,
    add_multiple,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed,
    share,
    similarity,
)
from lexprobe.toolkit.errors import did_you_mean

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(text) -> str:
    """`text` for stdout or stderr with its control characters (escape sequences) spelled out as \\xNN."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


EXAMPLES = {  # one or two commands per subcommand, shown at the end of its --help (tested to parse)
    "score": [
        "lexprobe score --model default --suite xstest --out runs/scores",
        'lexprobe score --model default --prompt "How do I kill a Python process?" --out runs/one',
    ],
    "generate": ["lexprobe generate --model default --suite xstest --limit 20 --out runs/completions"],
    "classify": ["lexprobe classify --completions runs/completions/completions.csv --out runs/classified"],
    "evaluate": [
        "lexprobe evaluate --completions runs/classified/classified.csv --label-column predicted --out runs/eval"
    ],
    "validate-margin": ["lexprobe validate-margin --model default --out runs/validity"],
    "attribute": [
        'lexprobe attribute --model default --prompt "Where can I buy a can of coke?" --out runs/coke',
        "lexprobe attribute --model default --suite xstest --type homonyms --method ig,occlusion --out runs/homonyms",
    ],
    "plausibility": [
        "lexprobe plausibility --model default --method saliency,occlusion --out runs/plausibility"
    ],
    "heatmap": ["lexprobe heatmap --from runs/homonyms --ids 10 35 --format png,svg --out runs/figures"],
    "perturb": ["lexprobe perturb --model default --suite xstest --type homonyms --out runs/perturb"],
    "pairs": ["lexprobe pairs --model default --pairs my_pairs.csv --out runs/pairs"],
    "contrast": ["lexprobe contrast --model default --out runs/contrast"],
    "transplant": ["lexprobe transplant --model default --out runs/transplant"],
    "diagnose": ["lexprobe diagnose --model default --suite xstest --type homonyms --out runs/diagnose"],
    "compare": ["lexprobe compare --config examples/compare_default.toml --out runs/compare"],
    "direction": ["lexprobe direction --model default --out runs/direction"],
    "harmfulness": ["lexprobe harmfulness --model default --out runs/harmfulness"],
    "mitigate": ["lexprobe mitigate --model default --suite xstest --out runs/mitigate"],
    "pathway": ["lexprobe pathway --model default --substitutions runs/perturb --top 3 --out runs/pathway"],
    "suites": ["lexprobe suites"],
    "methods": ["lexprobe methods"],
    "templates": ["lexprobe templates"],
}


class Parser(argparse.ArgumentParser):
    """argparse with every default in --help, an example at its end (`EXAMPLES`), and bad flags as one
    line on stderr with exit code 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        # "-1e38" and "-.5e-3" are numbers, not flags (argparse's own pattern knows only -1 and -1.5)
        self._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

    def format_help(self) -> str:
        examples = EXAMPLES.get(self.prog.split()[-1])  # a subcommand's; none for `lexprobe` itself
        text = super().format_help()
        return text + "\nexamples:\n" + "".join(f"  {e}\n" for e in examples) if examples else text

    def error(self, message: str):
        choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:  # a mistyped command or choice
            options = re.findall(r"'([^']*)'", choice.group(2)) or [
                c.strip() for c in choice.group(2).split(",")
            ]
            hint = did_you_mean(choice.group(1), options, quote="'")
            if hint:  # the closest one, not the whole list
                message = message[: choice.start()] + f"invalid choice: '{choice.group(1)}': {hint.rstrip()}"
        flags = re.match(r"unrecognized arguments: (--[\w-]+)", message)
        if flags:  # a mistyped flag: the closest of this command's flags
            known = {o for p in _commands(self) for a in p._actions for o in a.option_strings}
            hint = did_you_mean(flags.group(1), known, quote="'")
            message = f"{message}: {hint.rstrip()}" if hint else message
        message = re.sub(r"^argument (--[\w-]+)(/[^:]*)?: (must|is|'|invalid)", r"\1 \3", message)
        sys.stderr.write(f"lexprobe: error: {plain(message)} (see `{self.prog} --help`)\n")
        sys.exit(2)


def _commands(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """The subcommand parsers under `parser` (or the parser itself where it has none), for the flags a
    mistyped one may have meant; the command given on the command line first, where it is one."""
    subs = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if subs is None:
        return [parser]
    given = [subs.choices[w] for w in sys.argv[1:2] if w in subs.choices]
    return given or list(subs.choices.values())


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: ...)` for every flag that has a default, including lists and switches, and
    names a flag's value after the flag (`--steps STEPS`, not the field's `N_STEPS`)."""

    def _get_default_metavar_for_optional(self, action):
        return action.option_strings[-1].lstrip("-").upper().replace("-", "_")

    def _get_help_string(self, action):
        text = action.help or ""
        if "%(default)" in text or "(default:" in text or action.default is argparse.SUPPRESS:
            return text  # a help that says its default in words
        if not action.option_strings:
            return text
        if action.required:
            return text
        if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
            return f"{text} (default: off)"  # the switch is not given unless you give it
        if isinstance(action, argparse._VersionAction | argparse._HelpAction):
            return text
        default = action.default
        if isinstance(default, list):
            default = ",".join(map(str, default)) if default else "none"
        elif default is None:
            default = "none"
        return f"{text} (default: {str(default).replace('%', '%%')})"


class ListAction(argparse.Action):
    """Values separated by spaces or commas, the flag repeatable; given values replace the default."""

    def __init__(self, option_strings, dest, nargs="+", item=None, **kwargs):
        super().__init__(option_strings, dest, nargs=nargs, **kwargs)
        self.item = item  # converts each value (an argparse type function), or None: strings

    def __call__(self, parser, namespace, values, option_string=None):
        items = [v.strip() for value in values for v in str(value).split(",") if v.strip()]
        if not items:
            parser.error(f"{option_string} is empty: give one or more values")
        if self.item is not None:
            try:
                items = [self.item(v) for v in items]
            except argparse.ArgumentTypeError as err:
                parser.error(f"argument {option_string}: {err}")
        given = namespace.__dict__.setdefault("_given_lists", set())
        before = list(getattr(namespace, self.dest) or []) if self.dest in given else []
        given.add(self.dest)
        setattr(namespace, self.dest, before + items)


def thread_count(text: str) -> int:
    value = positive_int(text)
    cores = os.cpu_count() or 1
    if value > cores:
        raise argparse.ArgumentTypeError(f"is more than this machine's {cores} CPUs, got {value}")
    return value


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument(
        "--model",
        default="default",
        help="default | smollm2 | gemma3 | tiny-random | HF dir | cached hub id | .gguf",
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
        help="auto | float32 | bfloat16 | float16 (or fp32, bf16, fp16); auto: bf16 on CUDA and on a CPU with "
        "native bf16, else float32 (float32 everywhere for runs that attribute with integrated gradients, "
        "GradientSHAP or input x gradient)",
    )
    g.add_argument(
        "--chat-template",
        default=None,
        metavar="T",
        help="a chat template for a model whose files have none, or to replace its own: a family (see "
        "`lexprobe templates`), a Jinja file, or none for the raw prompt of a base model (default: the model's own; gemma for gemma3)",
    )
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    g.add_argument(
        "--device-map",
        default=None,
        metavar="M",
        help="spread the model over devices (accelerate): auto | balanced | sequential | a JSON file of module -> device",
    )
    g.add_argument("--batch-size", type=positive_int, default=16, help="prompts per forward pass")
    g.add_argument(
        "--generate-batch-size",
        type=positive_int,
        default=48,
        metavar="B",
        help="completions generated together where a command generates (generate, validate-margin, mitigate): a "
        "decode step costs little more for more rows; in bf16 the batch can change a completion",
    )
    g.add_argument(
        "--threads",
        type=thread_count,
        default=None,
        help="CPU threads for torch (none: all cores; 1 is faster when other jobs share the CPU)",
    )
    g.add_argument(
        "--weights-sha256", default=None, metavar="HEX", help="refuse weights whose sha256 differs"
    )
    g.add_argument(
        "--verify-weights",
        action="store_true",
        help="hash the weights files again (by default a file is hashed once, and again when its size or mtime change)",
    )
    g.add_argument(
        "--direction",
        default=None,
        metavar="FILE",
        help="a direction.json of `lexprobe direction` for --ablate/--add-direction (none: this model's, found once and cached)",
    )
    g.add_argument(
        "--ablate-direction",
        type=ablate_share,
        nargs="?",
        const=1.0,
        default=None,
        metavar="S",
        help="project the refusal direction out of every layer, every position (S: the share removed, up to 2; 1 if not given)",
    )
    g.add_argument(
        "--add-direction",
        type=add_multiple,
        default=None,
        metavar="ALPHA",
        help="add ALPHA (-50 to 50) times the refusal direction at its layer, every position",
    )
    g.add_argument(
        "--steer",
        default=None,
        metavar="FILE",
        help="apply a fix `lexprobe mitigate` chose (its chosen.json) to every forward pass",
    )
    g.add_argument(
        "--readout",
        default=None,
        metavar="FILE",
        help="a refusal readout JSON to use instead of the calibrated one",
    )
    g.add_argument(
        "--recalibrate",
        action="store_true",
        help="calibrate the readout on this machine even where one is cached or shipped with lexprobe",
    )


def add_harmfulness_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--harmfulness",
        nargs="?",
        const=True,
        default=False,
        metavar="PROBE",
        help="also write the harmfulness probe's logit beside each margin (> 0: represented harmful): this "
        "model's probe, fitted once and cached (`lexprobe harmfulness`), or PROBE, a probe.json (default: off)",
    )


def add_parallel_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("distributed (Ray)")
    g.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="shard the prompts over N model replicas on Ray (a local cluster unless --ray-address)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        metavar="A",
        help="join the Ray cluster at A (e.g. auto, or host:6379) instead of starting one here",
    )
    g.add_argument(
        "--num-gpus",
        type=non_negative_float,
        default=None,
        metavar="G",
        help="GPUs per replica (none: 1 where the cluster has GPUs, else 0)",
    )


def add_suite_args(p: argparse.ArgumentParser, required: bool = True, default: str | None = None) -> None:
    g = p.add_argument_group("suite")
    g.add_argument(
        "--suite",
        required=required,
        default=default,
        help="a bundled suite (see `lexprobe suites`) or a CSV/TSV/JSONL/Parquet file",
    )
    g.add_argument(
        "--type", dest="types", action=ListAction, default=[], metavar="T", help="only these prompt types"
    )
    g.add_argument("--ids", action=ListAction, default=[], metavar="ID", help="only these prompt ids")
    g.add_argument("--limit", type=positive_int, default=None, metavar="N", help="only the first N prompts")
    g.add_argument("--prompt-column", default="prompt", metavar="C", help="a suite file's prompt column")
    g.add_argument("--id-column", default="id", metavar="C", help="a suite file's id column")
    g.add_argument("--type-column", default="type", metavar="C", help="a suite file's prompt-type column")
    g.add_argument("--label-column", default="label", metavar="C", help="a suite file's safe/unsafe column")


def out_dir(text: str) -> str:
    """--out: a directory that can be made or used, checked before any model loads."""
    from lexprobe.toolkit.errors import OutputError
    from lexprobe.toolkit.io.results import check_out_dir

    try:
        check_out_dir(text)
    except OutputError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--out ")) from err  # "--out 'x' is a file..."
    return text


def add_out_args(p: argparse.ArgumentParser, required: bool = True, resume: bool = True) -> None:
    p.add_argument(
        "--out", type=out_dir, required=required, default=None, metavar="DIR", help="output directory"
    )
    if resume:
        p.add_argument("--resume", action="store_true", help="keep the rows already in --out and do the rest")
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")


def add_attribution_args(p: argparse.ArgumentParser, methods: list[str]) -> None:
    g = p.add_argument_group("attribution")
    g.add_argument(
        "--method",
        dest="methods",
        action=ListAction,
        default=list(methods),
        metavar="M",
        help="attribution methods (`all` for every one; see `lexprobe methods`)",
    )
    g.add_argument(
        "--target",
        default="smooth",
        help="the margin to explain: smooth (the decision margin without its steps) | decision | sampled",
    )
    g.add_argument(
        "--steps",
        dest="n_steps",
        type=positive_int,
        default=16,
        help="integrated gradients: first uniform steps",
    )
    g.add_argument(
        "--max-steps",
        type=positive_int,
        default=256,
        help="integrated gradients: refine up to this many steps",
    )
    g.add_argument(
        "--tolerance",
        type=positive_float,
        default=0.05,
        help="integrated gradients: completeness error to reach",
    )
    g.add_argument(
        "--ig-rule",
        dest="rule",
        default="adaptive",
        help="integrated gradients: quadrature rule, adaptive | trapezoid | gausslegendre",
    )
    g.add_argument(
        "--baseline", default="pad", help="integrated gradients: reference for the user tokens, pad | zero"
    )
    g.add_argument(
        "--samples",
        dest="n_samples",
        type=positive_int,
        default=None,
        help="samples of shapley / kernel_shap / lime / gradient_shap (none: each method's own default)",
    )
    g.add_argument(
        "--replacement", default=None, help="perturbation methods put this text in a removed word's place"
    )
    g.add_argument("--group-phrases", action="store_true", help='treat "blow up" as one word')
    g.add_argument(
        "--seed", type=seed, default=0, help="random seed (sampling methods, random rankings, bootstrap)"
    )


def add_faithfulness_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("faithfulness")
    g.add_argument(
        "--no-faithfulness", dest="faithfulness", action="store_false", help="skip the faithfulness measures"
    )
    g.add_argument(
        "--random-orders",
        dest="n_random",
        type=positive_int,
        default=3,
        help="random orders behind the random ranking",
    )


def add_substitution_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("substitution")
    g.add_argument(
        "--strategy",
        dest="strategies",
        action=ListAction,
        default=["lexicon", "auto"],
        metavar="S",
        help="lexicon | auto | user",
    )
    g.add_argument(
        "--rewrite",
        dest="rewrites",
        action=ListAction,
        default=[],
        metavar="WORD=SUB",
        help="user rewrites, e.g. kill=stop,end (more substitutes of one word follow it after commas)",
    )
    g.add_argument(
        "--lexicon", default=None, metavar="FILE", help="a trigger lexicon JSON instead of the bundled one"
    )
    g.add_argument(
        "--min-similarity", type=similarity, default=0.7, help="MiniLM similarity a variant must keep"
    )
    g.add_argument("--per-word", type=positive_int, default=1, help="substitutes kept per word")
    g.add_argument(
        "--content-words",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="rewrite at most N non-trigger words per prompt, a trigger's part of speech first (none: all)",
    )
