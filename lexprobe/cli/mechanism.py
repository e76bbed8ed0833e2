"""`lexprobe direction`: the refusal direction inside the model, and the steering it allows."""

from __future__ import annotations

from lexprobe.cli.options import (
    ListAction,
    add_model_args,
    add_out_args,
    add_suite_args,
    plain,
    positive_float,
    positive_int,
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


def cmd_mitigate(a) -> None:
    from lexprobe.analyses.mitigate import MitigateConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(MitigateConfig.from_cli(a))
    t = result.frame
    view = t[["mitigation", "strength"]].assign(
        safe=[f"{r:.1%}" for r in t["safe_refusal_rate"]],
        unsafe=[f"{r:.1%}" for r in t["unsafe_refusal_rate"]],
    )
    if "generated_safe_refusal_rate" in t:
        view = view.assign(
            generated_safe=[f"{r:.0%}" for r in t["generated_safe_refusal_rate"]],
            generated_unsafe=[f"{r:.0%}" for r in t["generated_unsafe_refusal_rate"]],
        )
    print_table(view, title="refused (margin > 0), safe and unsafe prompts, by mitigation")
    print(plain(f"wrote {a.out}/tradeoff.csv, margins.csv, tradeoff.png"))


def cmd_pathway(a) -> None:
    from lexprobe.analyses.pathway import PathwayConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(PathwayConfig.from_cli(a))
    t = result.frame
    view = t[["pair", "prompt", "variant", "margin_prompt", "margin_variant", "best_layer", "best_token"]].assign(
        best_share=t["best_share"].round(2), swapped_token=t["swapped_token_best_share"].round(2),
        last_template_token=t["last_template_token_best_share"].round(2),
    )  # fmt: skip
    print_table(view, title="share of the margin change carried by the best site (1: all of it)")
    print(plain(f"wrote {a.out}/pathway.csv, patching.csv, projections.csv and figures"))


def register(sub) -> None:
    p = sub.add_parser(
        "direction", help="the refusal direction (difference in means, selected by ablation) of a model"
    )
    add_model_args(p)
    p.add_argument(
        "--train-prompts", type=positive_int, default=None, metavar="N",
        help="harmful and harmless calibration train instructions each (default: all 260)",
    )  # fmt: skip
    p.add_argument(
        "--val-prompts", type=positive_int, default=32, metavar="N",
        help="harmful and harmless val instructions each, for the selection",
    )  # fmt: skip
    p.add_argument(
        "--kl-bound", type=positive_float, default=0.1, help="largest KL on harmless prompts under ablation"
    )
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_direction)

    p = sub.add_parser(
        "mitigate",
        help="what would cut over-refusal (direction ablation, a false-refusal vector, a note) and its safety cost",
    )
    add_model_args(p)
    add_suite_args(p, required=False, default="xstest")
    p.add_argument(
        "--ablate", action=ListAction, item=positive_float, default=[0.25, 0.5, 1.0], metavar="S",
        help="shares of the refusal direction removed, one row each",
    )  # fmt: skip
    p.add_argument(
        "--false-refusal", action=ListAction, item=positive_float, default=[0.5, 1.0, 2.0], metavar="S",
        help="shares of the false-refusal vector removed, one row each",
    )  # fmt: skip
    p.add_argument(
        "--no-instruction",
        dest="instruction",
        action="store_false",
        help="no row for the note naming the trigger",
    )
    p.add_argument(
        "--generate-per-type", type=int, default=0, metavar="N",
        help="also generate and classify N prompts of each type per row (0: margins only)",
    )  # fmt: skip
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
        "--substitutions", default=None, metavar="FILE",
        help="or a `lexprobe perturb` output (its substitutions.csv): its largest margin drops",
    )  # fmt: skip
    p.add_argument("--top", type=positive_int, default=3, help="pairs taken from --substitutions")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="write no figures")
    add_out_args(p, resume=False)
    p.set_defaults(func=cmd_pathway)
