"""`lexprobe pathway`: where a trigger word's effect travels inside the model.

For each prompt and minimal-pair variant (given on the command line, or the largest swaps of a
`lexprobe perturb` run), activation patching of the residual stream at every (block, token) from the
variant into the prompt (`toolkit.mechanism.patching`), and the projection on the refusal direction by
layer of the prompt, its variant and, on XSTest, its unsafe contrast.

Outputs: `pathway.csv` (a row per pair: margins, the best site and the share of the margin change it
carries, the swapped token's best share), `patching.csv` (every site), `projections.csv`, a layer x
token heatmap per pair (`patching_<k>.png`) and the projection curves (`projections.png`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe import prompts
from lexprobe.analyses.options import ModelOptions
from lexprobe.analyses.session import Session, direction_of, inputs_digest, study_session
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError, OutputError
from lexprobe.toolkit.io.progress import progress
from lexprobe.toolkit.io.results import MultiTableResult, Timer, provenance
from lexprobe.toolkit.io.suites import read_table
from lexprobe.toolkit.mechanism.patching import patch, projections
from lexprobe.toolkit.scoring.scorer import Scorer

log = logging.getLogger("lexprobe")


@dataclass(kw_only=True)
class PathwayConfig(Options):
    out: str | None = None  # None: nothing written (the Python API)
    model: ModelOptions = field(default_factory=ModelOptions)
    prompt: str | None = None  # one pair: a prompt ...
    variant: str | None = None  # ... and its variant
    contrast: str | None = None  # ... and, optionally, an unsafe contrast for the projections
    substitutions: str | pd.DataFrame | None = (
        None  # or the substitutions.csv of `lexprobe perturb` (or its table)
    )
    top: int = 3  # pairs taken from it: the largest margin drops among one-token-for-one-token swaps
    # (of trigger words, and of prompts the model refuses, where the table has some)
    figures: bool = True
    overwrite: bool = False
    reuse: bool = False  # diagnose --resume: a result in `out` finished from the same pairs is kept


class PathwayResult(MultiTableResult):
    filename = "pathway.csv"
    kind = "pathway"
    numeric_columns = ("swapped_token_best_share", "last_template_token_best_share")  # NaN: no share
    side_tables = ("patching", "projections")

    def overview(self) -> pd.DataFrame:
        return self.frame

    def _figures(self, out: Path) -> None:
        from lexprobe.toolkit.viz.mechanism import patching_figure, projection_figure

        for _, row in self.frame.iterrows():
            sites = self.tables["patching"][self.tables["patching"]["pair"] == row["pair"]]
            patching_figure(sites, row, out / f"patching_{row['pair']}.png")
        if len(self.tables["projections"]):  # none where the model has no refusal direction
            projection_figure(self.tables["projections"], self.frame, out / "projections.png")


def _contrasts() -> dict[str, str]:
    """XSTest prompt id -> the prompt of its unsafe contrast."""
    from lexprobe.toolkit.io.suites import load_suite

    pairs = read_table(Path(str(prompts.path("xstest_pairs.csv"))))
    by_id = load_suite("xstest").frame.set_index("id")["prompt"]
    return {str(s): by_id[str(u)] for s, u in zip(pairs["safe_id"], pairs["unsafe_id"])}


def pairs_of(config: PathwayConfig, scorer) -> pd.DataFrame:
    """pair, id, prompt, variant, word, replacement, contrast: from the flags or a substitutions.csv."""
    if config.substitutions is None:
        if not (config.prompt and config.variant):
            raise InputError(
                "give --prompt and --variant (and optionally --contrast), or --substitutions FILE"
            )
        a, b = (
            len(scorer.suffix_ids(scorer.encode(t, name)))
            for t, name in ((config.prompt, "--prompt"), (config.variant, "--variant"))
        )
        if a != b:
            raise InputError(
                f"--prompt and --variant differ in length ({a} and {b} tokens after the shared prefix): patching "
                "aligns tokens by position, so give a swap of one token for one token"
            )
        return pd.DataFrame(
            [
                {
                    "pair": "1",
                    "id": "",
                    "prompt": config.prompt,
                    "variant": config.variant,
                    "word": "",
                    "replacement": "",
                    "contrast": config.contrast or "",
                }
            ]
        )
    if isinstance(config.substitutions, pd.DataFrame):  # perturb's table, from the Python API or diagnose
        path, table = Path("substitutions"), config.substitutions.copy()
    else:
        path = Path(config.substitutions)
        if path.is_dir():
            path = path / "substitutions.csv"
        if not path.is_file():
            what = (
                "does not exist" if not Path(config.substitutions).exists() else "holds no substitutions.csv"
            )
            raise InputError(
                f"--substitutions '{config.substitutions}' {what}: give a `lexprobe perturb` output"
            )
        table = read_table(path)
    need = {"id", "prompt", "variant", "delta", "word", "replacement"}
    if not need <= set(table.columns):
        raise InputError(
            f"'{path}' lacks {', '.join(sorted(need - set(table.columns)))}: give perturb's substitutions.csv"
        )
    table["delta"] = pd.to_numeric(table["delta"], errors="coerce")
    same = [
        len(scorer.suffix_ids(scorer.encode(p))) == len(scorer.suffix_ids(scorer.encode(v)))
        for p, v in zip(table["prompt"], table["variant"])
    ]
    table = table[same]
    if (
        "role" in table and (table["role"] == "trigger").any()
    ):  # trigger swaps first, as the study is about them
        table = table[table["role"] == "trigger"]
    if "margin_orig" in table:  # and swaps of prompts the model refuses, where there are some
        refused = pd.to_numeric(table["margin_orig"], errors="coerce") > 0
        table = table[refused] if refused.any() else table
    table = table.sort_values("delta").head(config.top)
    if not len(table):
        raise InputError(f"'{path}' has no swap of one token for one token: patching needs aligned tokens")
    contrast = _contrasts()
    return pd.DataFrame(
        {
            "pair": [str(k + 1) for k in range(len(table))],
            "id": table["id"].astype(str).to_numpy(),
            "prompt": table["prompt"].to_numpy(),
            "variant": table["variant"].to_numpy(),
            "word": table["word"].to_numpy(),
            "replacement": table["replacement"].to_numpy(),
            "contrast": [contrast.get(str(i), "") for i in table["id"]],
        }
    )


def run(config: PathwayConfig, session: Session | None = None) -> PathwayResult:
    out = Path(config.out) if config.out else None
    if out is not None and (out / PathwayResult.filename).exists() and not config.overwrite:
        raise OutputError(f"'{out / PathwayResult.filename}' already exists: pass --overwrite to replace it")
    PathwayResult.refuse_directories(out)
    if config.model.steers:
        raise InputError(
            "lexprobe pathway patches the model as it is: drop --ablate-direction/--add-direction/--steer"
        )
    timer = Timer()
    with study_session(config.model, session, reads_direction=True) as session:
        scorer = Scorer(session.lm, session.fmt, session.readout, config.model.batch_size)
        pairs = pairs_of(config, scorer)
        try:
            direction = direction_of(session, config.model)
        except InputError as err:
            if config.model.direction:  # the user's direction file: theirs to mend
                raise
            # a model that refuses too little has no refusal direction; patching does not need one
            log.warning("pathway: no projections on the refusal direction (%s); patching all the same", err)
            direction = None
        inputs = inputs_digest(pairs, None if direction is None else direction.sha256())
        if config.reuse and (done := session.finished(out, PathwayResult, inputs)) is not None:
            return done
        rows, sites, curves = [], [], []
        for pair in progress(pairs.to_dict("records"), desc="patching", unit="pair"):
            result = patch(scorer, pair["prompt"], pair["variant"])
            if np.isnan(result.shares).all():  # the swap does not move the margin: no share to carry
                raise InputError(
                    f"'{pair['variant']}' scores as '{pair['prompt']}' does: no margin change to trace"
                )
            layer, site = np.unravel_index(np.nanargmax(result.shares), result.shares.shape)
            swapped = [t for t, (a, b) in enumerate(zip(result.tokens, result.variant_tokens)) if a != b]
            swap_best = float(np.nanmax(result.shares[:, swapped])) if swapped else float("nan")
            rows.append(
                pair
                | {
                    "margin_prompt": result.margin_prompt,
                    "margin_variant": result.margin_variant,
                    "best_layer": int(layer),
                    "best_token": result.tokens[site],
                    "best_kind": result.kinds[site],
                    "best_share": float(result.shares[layer, site]),
                    "swapped_token_best_share": swap_best,
                    "last_template_token_best_share": float(
                        np.nanmax(result.shares[:, len(result.tokens) - len(scorer.readout.tree) - 1])
                    ),
                }
            )
            for layer_i in range(result.shares.shape[0]):
                for t, token in enumerate(result.tokens):
                    sites.append(
                        {
                            "pair": pair["pair"],
                            "layer": layer_i,
                            "site": t,
                            "token": token,
                            "variant_token": result.variant_tokens[t],
                            "kind": result.kinds[t],
                            "share": result.shares[layer_i, t],
                            "margin": result.margins[layer_i, t],
                        }
                    )
            texts = {"prompt": pair["prompt"], "variant": pair["variant"]}
            if pair["contrast"]:
                texts["contrast"] = pair["contrast"]
            values = projections(scorer, list(texts.values()), direction) if direction is not None else []
            for (role, _), curve in zip(texts.items(), values):
                curves += [
                    {"pair": pair["pair"], "text": role, "layer": i, "projection": v}
                    for i, v in enumerate(curve)
                ]
        run_info = provenance(
            **session.provenance(),
            kind=PathwayResult.kind,
            inputs_sha256=inputs,
            wall_seconds=timer.seconds,
            direction=None
            if direction is None
            else {"layer": direction.layer, "position": direction.position},
        )
        tables = {
            "patching": pd.DataFrame(sites),
            "projections": pd.DataFrame(curves, columns=["pair", "text", "layer", "projection"]),
        }
        result = PathwayResult(pd.DataFrame(rows), run_info, tables)
        if out is not None:
            result.save(out, overwrite=True, figures=config.figures)
        return result
