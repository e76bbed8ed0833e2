"""`lexprobe direction`: the refusal direction of a model under a system-prompt condition
(`toolkit.mechanism.direction`), from the bundled calibration instructions (train split for the
candidates, val split for the selection; never the evaluation suite), saved with its provenance, its
candidates' figures and a per-layer figure, and cached per model, dtype, condition and readout so that
`--ablate-direction` and `--add-direction` on any command find it without a file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lexprobe.analyses.common import ModelOptions, Session, readout_sha256, session_for, study
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError, OutputError
from lexprobe.toolkit.io.cache import cache_dir, write_text_atomic
from lexprobe.toolkit.io.locks import building
from lexprobe.toolkit.io.results import MultiTableResult, Timer, provenance, write_csv_atomic
from lexprobe.toolkit.io.suites import load_suite
from lexprobe.toolkit.mechanism.direction import KL_BOUND, RefusalDirection, select_direction
from lexprobe.toolkit.scoring.scorer import Scorer

log = logging.getLogger(__name__)
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

    def __init__(self, frame, run=None, tables=None, direction: RefusalDirection | None = None):
        super().__init__(frame, run, tables)
        self.direction = direction

    def overview(self) -> pd.DataFrame:
        best = self.frame.dropna(subset=["bypass"]).sort_values("bypass").groupby("layer").head(1)
        return best.sort_values("layer")[["layer", "position", "bypass", "induce", "kl", "selected"]]

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

        title = with_model("Refusal direction candidates by layer (val split)", self.run)
        direction_figure(self.frame, self.direction.details, out / "direction.png", title)


def _texts(name: str, n: int | None) -> list[str]:
    return load_suite(name).frame["prompt"].tolist()[:n]


def _cache_path(session: Session, config: DirectionConfig) -> Path:
    key = {
        "dtype": str(session.lm.dtype),
        "system_prompt": session.system.describe(),
        "readout": readout_sha256(session.readout),
        "train": config.train_prompts,
        "val": config.val_prompts,
        "kl_bound": config.kl_bound,
        "format": 1,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir("directions", session.lm.weights_sha256[:16]) / f"{digest}.json"


def find(session: Session, config: DirectionConfig) -> tuple[RefusalDirection, pd.DataFrame]:
    """The direction of this session's model and condition and its candidates table: cached, else
    selected here (and cached; `config.overwrite` selects again)."""
    path = _cache_path(session, config)
    table = path.with_suffix(".csv")
    with building(path):
        if path.exists() and table.exists() and not config.overwrite:
            log.info("refusal direction: cache %s", path)
            d_model = session.lm.text_config.hidden_size
            direction = RefusalDirection.from_json(path.read_text(), str(path), d_model)
            return direction, pd.read_csv(table)
        scorer = Scorer(session.lm, session.fmt, session.readout, config.model.batch_size)
        n, v = config.train_prompts, config.val_prompts
        timer = Timer()
        selection = select_direction(
            scorer,
            (_texts("calibration-harmful", n), _texts("calibration-harmless", n)),
            (_texts("calibration-harmful-val", v), _texts("calibration-harmless-val", v)),
            kl_bound=config.kl_bound,
        )
        direction = selection.direction
        direction.details.update(
            provenance(**session.provenance(), study="direction", seconds=timer.seconds),
            data={"train": "calibration-harmful/-harmless (train)", "val": "calibration-*-val", "n_train": n, "n_val": v},
        )  # fmt: skip
        write_csv_atomic(selection.candidates, table)
        write_text_atomic(path, direction.to_json())
        return direction, selection.candidates


@study
def run(config: DirectionConfig, session: Session | None = None) -> DirectionResult:
    out = Path(config.out) if config.out else None
    if out is not None and (out / FILE).exists() and not config.overwrite:
        raise OutputError(f"'{out / FILE}' already exists: pass --overwrite to replace it")
    session = session_for(config.model, session)
    if session.steering is not None:
        raise InputError(
            "lexprobe direction finds the direction of the model as it is: drop --ablate/--add-direction"
        )
    direction, candidates = find(session, config)
    run_info = direction.details | {"layer": direction.layer, "position": direction.position}
    result = DirectionResult(candidates, run_info, direction=direction)
    if out is not None:
        result.save(out, overwrite=True, figures=config.figures)
    return result
