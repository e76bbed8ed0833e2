"""`lexprobe harmfulness`: does the model represent a prompt as harmful, apart from whether it refuses it?

Fits and selects the harmfulness probe of a model under one condition (`toolkit.mechanism.harmfulness`:
every block's input at the instruction's last token and at each template token after it, two methods,
fitted on the calibration train split and lexprobe's frames and contrast prompts, selected on contrast
groups held out of the fit in turn and on the val split; never XSTest), cached per model, dtype and
condition so that `score --harmfulness` and the studies that carry the probe's logit find it without
a file. Writes probe.json, sites.csv (every site's figures and
its cosine with the refusal direction) and a per-layer figure.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from lexprobe.analyses.options import ModelOptions
from lexprobe.analyses.session import Session, direction_of, study_session
from lexprobe.probes.harmfulness import HarmfulnessProbe
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError, OutputError
from lexprobe.toolkit.io.cache import write_text_atomic
from lexprobe.toolkit.io.results import MultiTableResult, provenance
from lexprobe.toolkit.mechanism.harmfulness import cosines, find_probe, ranked, selection_keys
from lexprobe.toolkit.scoring.scorer import Scorer
from lexprobe.toolkit.substitution.frames import calibration_sets

log = logging.getLogger(__name__)
FILE = "probe.json"


@dataclass(kw_only=True)
class HarmfulnessConfig(Options):
    out: str | None = None  # None: nothing written (the Python API); the cache is written all the same
    model: ModelOptions = field(default_factory=ModelOptions)
    train_prompts: int | None = None  # harmful and harmless calibration train instructions each (None: all)
    val_prompts: int | None = None  # the same of the val split
    figures: bool = True
    overwrite: bool = False

    def __post_init__(self):
        for name in ("train_prompts", "val_prompts"):
            value = getattr(self, name)
            if value is not None and value < 2:
                raise InputError(f"--{name.replace('_', '-')} must be at least 2, got {value}")


class HarmfulnessResult(MultiTableResult):
    """The selected probe (`probe`) and every candidate site (the table: layer, position, method,
    auroc_train, auroc_val, auroc_val_hard, loss_val, auroc_heldout_kind, cosine_refusal_direction,
    selected)."""

    filename = "sites.csv"
    kind = "harmfulness"
    numeric_columns = (
        "auroc_train",
        "auroc_val",
        "loss_val",
        "penalty",
        "auroc_heldout_kind",
        "auroc_val_hard",
        "hard_negatives_harmless_val",
        "cosine_refusal_direction",
    )

    def __init__(self, frame, run=None, tables=None, probe: HarmfulnessProbe | None = None):
        super().__init__(frame, run, tables)
        self.probe = probe

    def overview(self) -> pd.DataFrame:
        """Each layer's best site (by the selection's rule), per method."""
        f = ranked(self.frame.dropna(subset=["auroc_val_hard"]))  # the logistic probe's unfitted sites
        best = f.groupby(["method", "layer"], sort=False).head(1).sort_values(["method", "layer"])
        keep = [
            "method",
            "layer",
            "position",
            "auroc_heldout_kind",
            "auroc_val_hard",
            "cosine_refusal_direction",
        ]
        return best[[c for c in keep if c in best and best[c].notna().any()]].reset_index(drop=True)

    def _write(self, out: Path) -> None:
        super()._write(out)
        if self.probe is not None:
            write_text_atomic(out / FILE, self.probe.to_json())

    @classmethod
    def _read(cls, out: Path):
        result = super()._read(out)
        if (out / FILE).exists():
            result.probe = HarmfulnessProbe.from_json((out / FILE).read_text(), str(out / FILE))
        return result

    def _figures(self, out: Path) -> None:
        from lexprobe.toolkit.viz.harmfulness import probe_figure
        from lexprobe.toolkit.viz.names import with_model

        title = with_model(
            "Harmfulness probe by layer (lexprobe's prompts; never the evaluation suite)", self.run
        )
        probe_figure(self.frame, out / "harmfulness.png", title, score=selection_keys(self.frame)[0])


def run(config: HarmfulnessConfig, session: Session | None = None) -> HarmfulnessResult:
    out = Path(config.out) if config.out else None
    if out is not None and (out / FILE).exists() and not config.overwrite:
        raise OutputError(f"'{out / FILE}' already exists: pass --overwrite to replace it")
    with study_session(config.model, session, reads_direction=True) as session:
        if session.steering is not None:
            raise InputError(
                "lexprobe harmfulness fits the probe of the model as it is: drop the steering flags"
            )
        scorer = Scorer(session.lm, session.fmt, session.readout, config.model.batch_size)
        info = provenance(**session.provenance(), kind=HarmfulnessResult.kind)
        probe, table, weights = find_probe(
            scorer,
            session.fmt.describe(),
            calibration_sets,
            train_prompts=config.train_prompts,
            val_prompts=config.val_prompts,
            info=info,
            overwrite=config.overwrite,
        )
        table = table.copy()
        direction_note = None
        try:
            direction = direction_of(session, config.model)
            table["cosine_refusal_direction"] = cosines(table, weights, direction.vector)
            probe.details["cosine_refusal_direction"] = float(
                table.loc[table["selected"].astype(bool), "cosine_refusal_direction"].iloc[0]
            )
            probe.details["refusal_direction"] = {"layer": direction.layer, "position": direction.position}
        except InputError as err:  # a model with no refusal direction still has a probe
            direction_note = f"no refusal direction to compare with: {err}"
            log.warning("%s", direction_note)
            table["cosine_refusal_direction"] = np.nan
        fitted = probe.details.get("provenance", {})
        run_info = info | {
            "fitted_by": {k: fitted.get(k) for k in ("command", "started_at", "lexprobe_git_commit")},
            "layer": probe.layer,
            "position": probe.position,
            "method": probe.method,
            "probe_sha256": probe.sha256(),
            "probe": probe.details,
            "direction_note": direction_note,
        }
        result = HarmfulnessResult(table, run_info, probe=probe)
        if out is not None:
            result.save(out, overwrite=True, figures=config.figures)
        return result
