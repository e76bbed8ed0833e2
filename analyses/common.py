"""What every analysis shares: the model/condition/suite options and their set-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lexprobe.probes.margin import RefusalReadout
from lexprobe.toolkit.cache import write_json_atomic
from lexprobe.toolkit.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.models import LoadedModel, load_model
from lexprobe.toolkit.results import RowWriter, Timer, check_resumable, write_csv_atomic
from lexprobe.toolkit.suites import Suite, load_suite


@dataclass
class ModelOptions:
    model: str = "default"
    system_prompt: str = "model-default"
    dtype: str = "auto"
    device: str = "auto"
    weights_sha256: str | None = None
    batch_size: int = 16
    readout: str | None = None  # a readout JSON file instead of the calibrated one
    gradients: bool = False  # the run attributes: --dtype auto loads float32 (models.choose_dtype)


@dataclass
class SuiteOptions:
    suite: str = "xstest"
    types: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    limit: int | None = None
    prompt_column: str = "prompt"
    id_column: str = "id"
    type_column: str = "type"
    label_column: str = "label"


@dataclass
class Session:
    """A loaded model under one system-prompt condition, with its refusal readout."""

    lm: LoadedModel
    system: SystemPrompt
    fmt: ChatFormat
    readout: RefusalReadout

    def ensure_smooth_temperature(self, batch_size: int = 32) -> None:
        """A readout file without the smooth margin's temperature gets one, chosen on the calibration
        prompts as calibration does (a calibrated readout has it already)."""
        if self.readout.smooth_temperature is None:
            from lexprobe.probes.readout import calibration_prompts, set_smooth_temperature

            set_smooth_temperature(
                self.lm, self.fmt, self.readout, calibration_prompts(), max(batch_size, 32)
            )

    def provenance(self) -> dict:
        return {
            **self.lm.provenance(),
            "system_prompt": self.system.describe(),
            "system_prompt_placement": self.fmt.placement,
            "readout": self.readout.describe(self.lm.tokenizer) | {"details": self.readout.details},
        }


def open_suite(opts: SuiteOptions) -> Suite:
    suite = load_suite(opts.suite, opts.prompt_column, opts.id_column, opts.type_column, opts.label_column)
    return suite.select(opts.types or None, opts.ids or None, opts.limit)


def open_session(opts: ModelOptions, need_readout: bool = True) -> Session:
    """The model, chat format and readout of `opts`."""
    system = SystemPrompt.parse(opts.system_prompt)  # validate before the (slow) model load
    lm = load_model(opts.model, opts.dtype, opts.device, opts.weights_sha256, opts.gradients)
    fmt = ChatFormat(lm.tokenizer, system)
    readout = None
    if need_readout:
        from lexprobe.probes.readout import get_readout, load_readout_file

        if opts.readout:
            readout = load_readout_file(opts.readout, vocab_size=len(lm.tokenizer))
        else:
            readout = get_readout(lm, fmt, batch_size=opts.batch_size)
    return Session(lm, system, fmt, readout)


class ResumableRun:
    """The output side of a per-prompt analysis: rows are appended as they finish, `--resume` skips ids
    already written, run.json carries provenance from the start, and `finish` restores suite order."""

    def __init__(
        self, out: str, result_cls, columns, run_info: dict, suite: Suite, resume, overwrite, resume_keys
    ):
        self.out, self.result_cls, self.run_info, self.suite = Path(out), result_cls, run_info, suite
        self.timer = Timer()
        if resume:
            check_resumable(self.out, run_info, resume_keys)
        self.writer = RowWriter(self.out / result_cls.filename, columns, resume=resume, overwrite=overwrite)
        write_json_atomic(self.out / "run.json", run_info)
        self.todo = suite.frame[~suite.frame["id"].isin(self.writer.done)].reset_index(drop=True)

    def write(self, rows: list[dict]) -> None:
        self.writer.write(rows)

    def finish(self, **info):
        frame = pd.read_csv(self.writer.path, dtype={"id": str}, keep_default_na=False)
        order = {i: k for k, i in enumerate(self.suite.frame["id"])}
        frame = (
            frame[frame["id"].isin(order)]
            .sort_values("id", key=lambda s: s.map(order), kind="stable")
            .reset_index(drop=True)
        )
        self.run_info.update(status="complete", wall_seconds=self.timer.seconds, **info)
        write_csv_atomic(frame, self.writer.path)
        result = self.result_cls(frame, self.run_info)
        result.save(self.out)
        return result
