"""`lexprobe diagnose`: margins, contrasts, attribution and word swaps of a prompt selection in one report."""

from __future__ import annotations

from lexprobe.cli.minimal_pairs import add_pair_map_arg
from lexprobe.cli.options import (
    add_attribution_args,
    add_faithfulness_args,
    add_model_args,
    add_out_args,
    add_substitution_args,
    add_suite_args,
    plain,
    positive_int,
)


def cmd_diagnose(a) -> None:
    from lexprobe.analyses.diagnose import DiagnoseConfig, run

    result = run(DiagnoseConfig.from_cli(a))
    print("\n".join(plain(line) for line in result.summary["verdict"]))
    print(f"wrote {a.out}/report.html, summary.json and CSVs ({result.summary['wall_seconds']} s)")


def register(sub) -> None:
    p = sub.add_parser(
        "diagnose", help="why a prompt type gets refused: margins, attribution, word swaps in one report"
    )
    add_model_args(p)
    add_suite_args(p)
    add_out_args(p)
    add_pair_map_arg(p)
    p.add_argument(
        "--no-attribution", dest="attribution", action="store_false", help="skip the attribution step"
    )
    p.add_argument(
        "--no-perturb", dest="perturb", action="store_false", help="skip the word-substitution sweep"
    )
    p.add_argument(
        "--no-mechanism",
        dest="mechanism",
        action="store_false",
        help="skip the patching of the top trigger swaps and the mitigations",
    )
    p.add_argument(
        "--harmfulness",
        default=True,
        metavar="PROBE",
        help="the harmfulness probe behind the four cells, a probe.json (default: this model's, fitted once and cached)",
    )
    p.add_argument(
        "--no-harmfulness",
        dest="harmfulness",
        action="store_false",
        help="skip what the model represents (the harmfulness probe and its four cells)",
    )
    p.add_argument(
        "--mechanism-pairs", type=positive_int, default=2, metavar="N", help="trigger swaps patched"
    )
    p.add_argument("--top", type=positive_int, default=15, help="rows of the word-swap table in the report")
    p.add_argument(
        "--contrasts",
        dest="attribute_contrasts",
        action="store_true",
        help="also attribute the paired unsafe contrasts",
    )
    add_attribution_args(p, ["saliency", "occlusion"])
    add_faithfulness_args(p)
    add_substitution_args(p)
    p.set_defaults(func=cmd_diagnose)
