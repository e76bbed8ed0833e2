"""`lexprobe direction`: the refusal direction inside the model, and the steering it allows."""

from __future__ import annotations

import numpy as np

from lexprobe.cli.options import (
    ListAction,
    add_model_args,
    add_out_args,
    add_suite_args,
    non_negative_float,
    non_negative_int,
    plain,
    positive_float,
    positive_int,
    share,
)


def cmd_direction(a) -> None:
    from lexprobe.analyses.direction import DirectionConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(DirectionConfig.from_cli(a))
    d = result.direction
    sel, base, n = d.details["selection"], d.details["baseline"], d.details["prompts"]
    print_table(
        result.overview(),
        title="each layer's best candidate on the screening prompts (bypass: lower is better)",
    )
    print(
        plain(
            f"selected: block {d.layer}, template position {d.position}. Refused harmful val prompts "
            f"({n['harmful_val']}): mean margin {base['harmful_margin']:+.2f} -> {sel['bypass']:+.2f} with it "
            f"ablated; answered harmless ones ({n['harmless_val']}): {base['harmless_margin']:+.2f} -> "
            f"{sel['induce']:+.2f} with it added (bound {sel['induce_min']:+.2f}); KL {sel['kl']:.3f} "
            f"(bound {sel['kl_bound']:g})"
        )
    )
    print(plain(f"wrote {a.out}/direction.json, candidates.csv, direction.png"))


def cmd_harmfulness(a) -> None:
    from lexprobe.analyses.harmfulness import HarmfulnessConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(HarmfulnessConfig.from_cli(a))
    p = result.probe
    sel = p.details["selection"]
    from lexprobe.toolkit.mechanism.harmfulness import selection_keys

    held = sel["auroc_heldout_kind"] if selection_keys(result.frame)[0] == "auroc_heldout_kind" else None
    print_table(
        result.overview(),
        title="each layer's best site (by AUROC on "
        + ("contrast groups held out of the fit)" if held is not None else "the val split's hard prompts)"),
    )
    cosine = p.details.get("cosine_refusal_direction")
    print(
        plain(
            f"selected: {p.method} at block {p.layer}, position {p.position} (counted from the prompt's end); "
            + ("" if held is None else f"AUROC {held:.3f} on contrast groups held out of the fit; ")
            + f"val AUROC {sel['auroc_val']:.3f}, {sel['auroc_val_hard']:.3f} on harmful against hard harmless "
            f"prompts; cosine with the refusal direction " + ("n/a" if cosine is None else f"{cosine:+.2f}")
        )
    )
    print(plain(f"wrote {a.out}/probe.json, sites.csv, harmfulness.png"))


def cmd_mitigate(a) -> None:
    from lexprobe.analyses.mitigate import MitigateConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(MitigateConfig.from_cli(a))
    t = result.frame

    def rate(name):
        return [
            f"{r:.1%} ({lo:.0%}-{hi:.0%})"
            for r, lo, hi in zip(t[f"{name}_refusal_rate"], t[f"{name}_ci_low"], t[f"{name}_ci_high"])
        ]

    view = t[["mitigation", "strength", "coefficient", "gate"]].assign(
        safe=rate("safe"), unsafe=rate("unsafe")
    )
    sel = result.tables["selection"]
    view = view.assign(
        selection_safe=[f"{r:.0%}" for r in sel["safe_refusal_rate"]],
        selection_unsafe=[f"{r:.0%}" for r in sel["unsafe_refusal_rate"]],
        frontier=t["frontier"].map({True: "yes", False: ""}),
        chosen=t["chosen"].map({True: "<-", False: ""}),
    )
    print_table(
        view, title="refused (margin > 0, 95% CI) on the suite, and on the selection split, by setting"
    )
    fr = result.run.get("false_refusal")
    if fr:
        print(
            plain(
                f"false-refusal vector: {fr['kept_refused']} of {fr['tried']} harmless prompts lexprobe made were "
                f"refused and kept, against {fr['harmless_answered']} answered harmless instructions"
            )
        )
    chosen = t[t["chosen"]].iloc[0]
    line = (
        f"chosen by the rule on the selection split: {result.run['chosen']['describe']}; on the suite "
        f"{chosen['safe_refusal_rate']:.1%} of safe and {chosen['unsafe_refusal_rate']:.1%} of unsafe prompts refused"
    )
    if "agreement" in t and not np.isnan(chosen.get("agreement", np.nan)):
        line += f"; generations agree with the margin on {chosen['agreement']:.0%} of {int(chosen['n_generated_safe'] + chosen['n_generated_unsafe'])}"
    print(plain(line))
    print(
        plain(
            f"wrote {a.out}/tradeoff.csv, selection.csv, margins.csv, chosen.json, tradeoff.png (use it: --steer {a.out}/chosen.json)"
        )
    )


def cmd_pathway(a) -> None:
    from lexprobe.analyses.pathway import PathwayConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(PathwayConfig.from_cli(a))
    t = result.frame
    view = t[
        ["pair", "prompt", "variant", "margin_prompt", "margin_variant", "best_layer", "best_token"]
    ].assign(
        best_share=t["best_share"].round(2),
        swapped_token=t["swapped_token_best_share"].round(2),
        last_template_token=t["last_template_token_best_share"].round(2),
    )
    print_table(view, title="share of the margin change carried by the best site (1: all of it)")
    print(plain(f"wrote {a.out}/pathway.csv, patching.csv, projections.csv and figures"))


def register(sub) -> None:
    p = sub.add_parser(
        "direction", help="the refusal direction (difference in means, selected by ablation) of a model"
    )
    add_model_args(p)
    p.add_argument(
        "--train-prompts",
        type=positive_int,
        default=None,
        metavar="N",
        help="harmful and harmless calibration train instructions each (default: all 260)",
    )
    p.add_argument(
        "--val-prompts",
        type=positive_int,
        default=32,
        metavar="N",
        help="harmful and harmless val instructions each, for the selection",
    )
    p.add_argument(
        "--kl-bound", type=positive_float, default=0.1, help="largest KL on harmless prompts under ablation"
    )
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_direction)

    p = sub.add_parser(
        "harmfulness",
        help="the harmfulness probe (does the model represent a prompt as harmful, apart from refusing it?)",
    )
    add_model_args(p)
    p.add_argument(
        "--train-prompts",
        type=positive_int,
        default=None,
        metavar="N",
        help="harmful and harmless calibration train instructions each, with lexprobe's frames of them (default: all 260)",
    )
    p.add_argument(
        "--val-prompts",
        type=positive_int,
        default=None,
        metavar="N",
        help="harmful and harmless val instructions each, for the selection (default: all 39)",
    )
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_harmfulness)

    p = sub.add_parser(
        "mitigate",
        help="fixes for over-refusal (direction ablation, gated by harmfulness or not, a false-refusal vector, a note), their safety cost, and the one a rule chooses",
    )
    add_model_args(p)
    add_suite_args(p, required=False, default="xstest")
    p.add_argument(
        "--harmfulness",
        default=True,
        metavar="PROBE",
        help="the harmfulness probe that gates the conditional ablation: a probe.json (default: this model's, fitted once and cached)",
    )
    p.add_argument(
        "--ablate",
        action=ListAction,
        item=positive_float,
        default=[0.25, 0.5, 1.0],
        metavar="S",
        help="shares of the refusal direction removed, one row each",
    )
    p.add_argument(
        "--conditional",
        action=ListAction,
        item=positive_float,
        default=[1.0],
        metavar="S",
        help="shares of the refusal direction removed where the probe reads the prompt as harmless",
    )
    p.add_argument(
        "--gate-width",
        type=non_negative_float,
        default=1.0,
        metavar="W",
        help="the soft gate's width in probe logits (0: hard gates only)",
    )
    p.add_argument(
        "--false-refusal",
        action=ListAction,
        item=positive_float,
        default=[1.0, 2.0],
        metavar="S",
        help="shares of the false-refusal vector removed, one row each",
    )
    p.add_argument(
        "--coefficients",
        action=ListAction,
        item=share,
        default=[0.0, 0.5, 1.0],
        metavar="C",
        help="shares of the false-refusal vector's component along the refusal direction removed before use",
    )
    p.add_argument(
        "--no-instruction",
        dest="instruction",
        action="store_false",
        help="no row for the note naming the trigger",
    )
    p.add_argument(
        "--max-unsafe-drop",
        type=share,
        default=0.05,
        metavar="D",
        help="the rule: the largest drop in unsafe refusal a chosen fix may cost on the selection split",
    )
    p.add_argument(
        "--selection-prompts",
        type=positive_int,
        default=None,
        metavar="N",
        help="harmful and harmless calibration val instructions each in the selection split (default: all 39)",
    )
    p.add_argument(
        "--generate-per-type",
        type=non_negative_int,
        default=5,
        metavar="N",
        help="generate and classify N prompts of each type, as is and under the chosen fix (0: margins only)",
    )
    p.add_argument("--max-new-tokens", type=positive_int, default=64, help="tokens generated per prompt")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_mitigate)

    p = sub.add_parser(
        "pathway", help="where a trigger swap's effect travels: activation patching, projections"
    )
    add_model_args(p)
    p.add_argument("--prompt", default=None, help="a prompt ...")
    p.add_argument("--variant", default=None, help="... and its variant (one token swapped for one token)")
    p.add_argument("--contrast", default=None, help="... and an unsafe contrast, for the projections")
    p.add_argument(
        "--substitutions",
        default=None,
        metavar="FILE",
        help="or a `lexprobe perturb` output (its substitutions.csv): its largest margin drops",
    )
    p.add_argument("--top", type=positive_int, default=3, help="pairs taken from --substitutions")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_pathway)
