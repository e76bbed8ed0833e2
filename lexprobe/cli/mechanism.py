"""`lexprobe direction`: the refusal direction inside the model, and the steering it allows."""

from __future__ import annotations

from lexprobe.cli.options import add_model_args, add_out_args, plain, positive_float, positive_int


def cmd_direction(a) -> None:
    from lexprobe.analyses.direction import DirectionConfig, run
    from lexprobe.toolkit.io.console import print_table

    result = run(DirectionConfig.from_cli(a))
    d = result.direction
    sel, base = d.details["selection"], d.details["baseline"]
    print_table(
        result.overview(), title="each layer's best candidate on the val split (bypass: lower is better)"
    )
    print(
        plain(
            f"selected block {d.layer}, template position {d.position}: harmful val margin "
            f"{base['harmful_margin']:+.2f} -> {sel['bypass']:+.2f} ablated; harmless val margin "
            f"{base['harmless_margin']:+.2f} -> {sel['induce']:+.2f} with it added; KL {sel['kl']:.3f}"
        )
    )
    print(plain(f"wrote {a.out}/direction.json, candidates.csv, direction.png"))


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
