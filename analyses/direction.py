"""`lexprobe direction`: the refusal direction of a model under a system-prompt condition
(`toolkit.mechanism.direction`), from the bundled calibration instructions (train split for the
candidates, val split for the selection; never the evaluation suite), saved with its provenance, its
candidates' figures and a per-layer figure, and cached per model, dtype, condition and readout so that
`--ablate-direction` and `--add-direction` on any command find it without a file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lexprobe.analyses.options import ModelOptions
from lexprobe.analyses.session import Session, study_session
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError, OutputError
from lexprobe.toolkit.io.cache import write_text_atomic
from lexprobe.toolkit.io.results import MultiTableResult, provenance
from lexprobe.toolkit.mechanism.direction import KL_BOUND, RefusalDirection, find_direction
from lexprobe.toolkit.scoring.scorer import Scorer

FILE = "direction.json"


@dataclass(kw_only=True)
class DirectionConfig(Options):
    out: str | None = None  # None: nothing written (the Python API); the cache is written all the same
    model: ModelOptions = field(default_factory=ModelOptions)
    train_prompts: int | None = None  # harmful and harmless train instructions each (None: all 260)
    val_prompts: int = 32  # harmful and harmless val instructions each, for the selection
    kl_bound: float = KL_BOUND
    figures: bool = True
    overwrite: bool = False

    def __post_init__(self):
        if self.val_prompts < 1 or (self.train_prompts is not None and self.train_prompts < 1):
            raise InputError("--train-prompts and --val-prompts must be at least 1")
        if not self.kl_bound > 0:
            raise InputError(f"--kl-bound must be above 0, got {self.kl_bound}")


class DirectionResult(MultiTableResult):
    """The selected direction (`direction`) and every candidate (the table: layer, position, bypass,
    induce, kl, eligible, selected)."""

    filename = "candidates.csv"
    kind = "direction"

    def __init__(self, frame, run=None, tables=None, direction: RefusalDirection | None = None):
        super().__init__(frame, run, tables)
        self.direction = direction

    def overview(self) -> pd.DataFrame:
        best = self.frame.dropna(subset=["kl_screen"]).sort_values("layer")  # each layer's best, screened
        return best[["layer", "position", "bypass_screen", "induce_screen", "kl_screen", "selected"]]

    def _write(self, out: Path) -> None:
        super()._write(out)
        if self.direction is not None:
            write_text_atomic(out / FILE, self.direction.to_json())

    @classmethod
    def _read(cls, out: Path):
        result = super()._read(out)
        if (out / FILE).exists():
            result.direction = RefusalDirection.from_json((out / FILE).read_text(), str(out / FILE))
        return result

    def _figures(self, out: Path) -> None:
        from lexprobe.toolkit.viz.mechanism import direction_figure
        from lexprobe.toolkit.viz.names import with_model

        title = with_model(
            "Refusal direction candidates by layer (screening prompts of the val split)", self.run
        )
        direction_figure(self.frame, self.direction.details, out / "direction.png", title)


def run(config: DirectionConfig, session: Session | None = None) -> DirectionResult:
    out = Path(config.out) if config.out else None
    if out is not None and (out / FILE).exists() and not config.overwrite:
        raise OutputError(f"'{out / FILE}' already exists: pass --overwrite to replace it")
    with study_session(config.model, session) as session:
        if session.steering is not None:
            raise InputError(
                "lexprobe direction finds the direction of the model as it is: drop --ablate/--add-direction"
            )
        scorer = Scorer(session.lm, session.fmt, session.readout, config.model.batch_size)
        direction, candidates = find_direction(
            scorer,
            session.fmt.describe(),
            config.train_prompts,
            config.val_prompts,
            config.kl_bound,
            info=provenance(**session.provenance(), kind=DirectionResult.kind),
            overwrite=config.overwrite,
        )
        found = direction.details.get("provenance", {})
        run_info = provenance(**session.provenance(), kind=DirectionResult.kind) | {
            "found_by": {k: found.get(k) for k in ("command", "started_at", "lexprobe_git_commit")},
            "layer": direction.layer,
            "position": direction.position,
            "direction": direction.details,
        }
        result = DirectionResult(candidates, run_info, direction=direction)
        if out is not None:
            result.save(out, overwrite=True, figures=config.figures)
        return result
