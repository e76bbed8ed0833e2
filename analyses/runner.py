"""The runner of per-prompt studies (`score`, `generate`, `perturb`, `attribute`, `pairs`), the way
lm-evaluation-harness's evaluator drives every task.

A study (`PerPrompt`) declares what is its own: its result class, its settings, its columns, its work
on a list of prompts here (`local`) and on a Ray worker (`remote`), and what it adds at the end
(`finish`). The runner owns the rest, in one order for all of them: the suite, every check that can
fail before the model loads, the session and its steering (a `with`), the harmfulness probe, run.json
(the same keys for every study; what is a study's own sits under `settings` and `details`), resume,
the Ray-or-local branch, and the result.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from lexprobe.analyses.options import ModelOptions, ParallelOptions, open_suite
from lexprobe.analyses.session import Session, probe_option, study_session, with_harmfulness
from lexprobe.toolkit.errors import OutputError
from lexprobe.toolkit.io.progress import count
from lexprobe.toolkit.io.results import (
    Timer,
    claim,
    provenance,
    read_csv_table,
    read_run,
    write_csv_atomic,
    write_run,
)
from lexprobe.toolkit.io.rows import RowWriter, check_resumable, check_rows_match, refuse_differences
from lexprobe.toolkit.io.suites import Suite
from lexprobe.toolkit.models.devices import dtype_name

log = logging.getLogger(__name__)

# What every resumed run must share with the one it continues
RUN_KEYS = (
    "kind",
    "model_spec",
    "weights_sha256",
    "dtype",
    "system_prompt",
    "chat_template",
    "steering",
    "suite",
    "suite_sha256",
    "readout_sha256",
    "harmfulness_probe_sha256",
    "settings",
)
SHARD_BATCHES = 4  # batches in one shard of a sharded run (its unit of work and of retry)


class PerPrompt:
    """A per-prompt study, as the runner drives it. A subclass sets the class attributes and overrides
    what it needs; `self.config` is its config (with `model`, `out`, `resume`, `overwrite`, `parallel`
    and, where it has one, `suite` and `harmfulness`), `self.session` the open session."""

    result_cls: type  # a TableResult: its kind, filename and one_row_per_id
    store_cls: type | None = None  # how finished work is kept (None: `RowStore`, a CSV of rows)
    columns: list[str] = []  # the rows' columns
    harmfulness_columns: list[str] = []  # added where the harmfulness probe is read
    needs_readout = True
    gradients = False  # `--dtype auto` loads float32 (a study whose gradients need it)
    noun = "prompt"  # what one suite row is, in progress bars

    def __init__(self, config):
        self.config = config
        self.batch_size = config.model.batch_size  # prompts in one forward pass
        self.session: Session | None = None
        self.probe = None  # the harmfulness probe, where the study reads one

    # before the model loads
    def select(self, suite: Suite | None) -> Suite:
        """The rows this run works on (a given suite, else the config's selection)."""
        return suite or open_suite(self.config.suite)

    def check(self, suite: Suite) -> None:
        """Everything that can be checked before the model loads (the runner checks the rest)."""

    def records(self, frame: pd.DataFrame) -> list[dict]:
        """The rows still to do, as the study's work takes them."""
        return frame.to_dict("records")

    # with the session
    def prepare(self) -> tuple[dict, dict]:
        """What the study builds once the session is open; returns (settings: what it was asked, a
        resume key; details: what it found, e.g. a threshold)."""
        return {}, {}

    def warm_up(self) -> None:
        """Slow preparation that must wait for every check (resume included) to pass."""

    def local(self, records: list[dict], emit) -> None:
        """Work through `records` here, calling `emit(indices, result)` as parts finish (`rows` turns
        a result for those records into rows)."""
        raise NotImplementedError

    remote = None  # fn(worker, records, *remote_args()) -> a result for those records, on a Ray worker
    shard_size: int | None = None  # prompts per shard (None: SHARD_BATCHES batches)

    def remote_args(self) -> tuple:
        return ()

    def rows(self, records: list[dict], result) -> list[dict]:
        """The rows of `records`, given what `local`'s emit or `remote` returned for them."""
        return result

    def counts(self) -> dict:
        """What this run did beyond its prompts, for run.json's details (e.g. texts scored)."""
        return {}

    def finish(self, result):
        """The result with what the study adds over all its rows (tables, figures)."""
        return result


def run_per_prompt(study: PerPrompt, session: Session | None = None, suite: Suite | None = None):
    """Run `study` over its suite: resumable, sharded over Ray where `config.parallel` asks, its rows
    in suite order at the end."""
    config = study.config
    store_cls = study.store_cls or RowStore
    suite = study.select(suite)
    study.check(suite)
    parallel: ParallelOptions = getattr(config, "parallel", None) or ParallelOptions()
    parallel.check()  # a wrong --ray-address fails here, not after the model loads
    out = Path(config.out) if config.out else None
    if out is not None:
        claim(out, study.result_cls.kind)
        store_cls.precheck(out, study.result_cls, config.resume, config.overwrite)
        if config.resume and not config.overwrite:
            _resume_precheck(out, config.model, suite)
    model: ModelOptions = config.model
    if study.gradients:
        model = replace(model, gradients=True)
    with study_session(model, session, need_readout=study.needs_readout) as session:
        study.session, timer = session, Timer()
        batch_size = study.batch_size
        study.probe = probe_option(session, getattr(config, "harmfulness", None), batch_size)
        settings, details = study.prepare()
        run_info = provenance(
            **session.provenance(),
            kind=study.result_cls.kind,
            suite=suite.source,
            suite_sha256=suite.full.sha256,
            n_prompts=len(suite),
            status="running",
            settings=settings,
            details=details,
            batch_size=batch_size,
            sharding=None,
        )
        if parallel.active:  # not a resume key: single-process and sharded runs continue each other
            run_info["sharding"] = asdict(parallel) | {"shard_prompts": _shard_prompts(study, batch_size)}
        run_info["earlier_runs"] = []  # the invocations a resumed run continues (the store fills it)
        columns = with_harmfulness(run_info, study.probe, study.columns, study.harmfulness_columns)
        store = store_cls(
            out, study.result_cls, columns, run_info, suite, resume=config.resume, overwrite=config.overwrite
        )
        study.warm_up()
        run_info["readout"] = session.provenance()["readout"]  # a temperature warm_up may have set
        store.begin()
        todo = study.records(store.todo)
        if todo and parallel.active:
            _run_sharded(study, session, todo, store, batch_size)
        elif todo:
            study.local(todo, lambda idx, got: store.write(study.rows([todo[i] for i in idx], got)))
        details.update(study.counts())
        result = store.finish(wall_seconds=timer.seconds, n_prompts_this_run=len(todo))
        return study.finish(result)


def earlier_runs(old: dict) -> list[dict]:
    """What the run a resume continues did, and the runs it continued in turn: each invocation's
    command, start, wall time, prompts and batch size (in bf16 a batch's rows can change with its size),
    so run.json keeps the record of the work it holds."""
    if not old:
        return []
    keys = (
        "command",
        "started_at",
        "wall_seconds",
        "n_prompts_this_run",
        "batch_size",
        "status",
        "lexprobe_git_commit",
    )
    return [*old.get("earlier_runs", []), {k: old.get(k) for k in keys}]


def _resume_precheck(out: Path, model: ModelOptions, suite: Suite) -> None:
    """The resume keys known before the model loads (model, system prompt, a dtype that is named, the
    suite's content) against the run in `out`: a resume that cannot go on is told before the load."""
    import torch

    from lexprobe.toolkit.models.chat import SystemPrompt
    from lexprobe.toolkit.models.devices import resolve_dtype

    old = read_run(out)
    here = {
        "model_spec": model.model,
        "system_prompt": SystemPrompt.parse(model.system_prompt).describe(),
        "suite_sha256": suite.full.sha256,
    }
    if model.dtype != "auto":
        here["dtype"] = dtype_name(resolve_dtype(model.dtype, torch.device("cpu")))
    refuse_differences(out, old, here)


def _shard_prompts(study: PerPrompt, batch_size: int) -> int:
    return study.shard_size or SHARD_BATCHES * batch_size


def _run_sharded(study: PerPrompt, session: Session, todo: list[dict], store, batch_size: int) -> None:
    from lexprobe.toolkit.distributed import Cluster, Replica, run_shards

    lm = session.lm
    replica = Replica(
        model=lm.spec,
        dtype=dtype_name(lm.dtype),
        device=str(lm.device),
        weights_sha256=lm.weights_sha256,
        system=session.system,
        device_map=lm.extra.get("placement"),
        steering=session.steering,
        template=session.fmt.template,
        readout_json=session.readout.to_json() if session.readout is not None else None,
        batch_size=batch_size,
    )
    size = _shard_prompts(study, batch_size)
    shards = [todo[i : i + size] for i in range(0, len(todo), size)]
    jobs = [(shard, *study.remote_args()) for shard in shards]
    parallel = study.config.parallel
    with Cluster(replica, parallel.workers or 2, parallel.ray_address, parallel.num_gpus) as c:
        desc = f"{study.result_cls.kind}: {count(len(todo), study.noun)} on {c.workers} Ray workers"
        for k, got in run_shards(c, study.remote, jobs, desc):
            store.write(study.rows(shards[k], got))


class RowStore:
    """Where a per-prompt study's rows go. With an output directory: appended to its CSV as they finish,
    `resume` skips ids already written, run.json carries provenance from the start. Without one (`out`
    None, the Python API): kept in memory, nothing written. `finish` restores suite order."""

    @staticmethod
    def precheck(out: Path, result_cls, resume: bool, overwrite: bool) -> None:
        """Before the model loads: an earlier run's table is there and neither flag says what to do."""
        path = out / result_cls.filename
        if path.is_file() and not (resume or overwrite):
            raise OutputError(
                f"'{path}' already exists: pass --resume to continue that run or --overwrite to replace it"
            )

    def __init__(
        self, out: Path | None, result_cls, columns, run_info: dict, suite: Suite, resume, overwrite
    ):
        self.out, self.result_cls, self.run_info, self.suite = out, result_cls, run_info, suite
        self.columns = columns
        self.rows: list[dict] = []
        self.writer = None
        done: set[str] = set()
        if out is not None:
            old = check_resumable(out, run_info, RUN_KEYS, result_cls.filename) if resume else {}
            run_info["earlier_runs"] = earlier_runs(old)
            self.writer = RowWriter(
                out / result_cls.filename,
                columns,
                resume=resume,
                overwrite=overwrite,
                recorded=old.get("rows_written"),
            )
            check_rows_match(
                self.writer.path,
                self.writer.old,
                suite.full.frame,
                result_cls.one_row_per_id,
                result_cls.numeric_columns,
            )
            done = self.writer.done
        self.todo = suite.frame[~suite.frame["id"].isin(done)].reset_index(drop=True)

    def begin(self) -> None:
        """run.json is written with the first rows (and again at the end)."""

    def write(self, rows: list[dict]) -> None:
        if self.writer is None:
            self.rows.extend(rows)
            return
        self.writer.write(rows)
        self.run_info["rows_written"] = self.writer.count  # rows first: a kill between the two leaves
        write_run(self.out, self.run_info, self.result_cls.kind)  # more rows than recorded, never fewer

    def finish(self, **info):
        if self.writer is not None:
            if self.writer.fresh:  # nothing to do, or nothing written: an empty table all the same
                self.write([])
            frame = read_csv_table(self.writer.path)
        else:
            frame = pd.DataFrame(self.rows, columns=self.columns)
        order = {i: k for k, i in enumerate(self.suite.frame["id"])}
        earlier = int((~frame["id"].isin(order)).sum())  # rows a resumed run with a narrower selection
        if earlier:  # (--limit, --ids, --type) did not ask for: kept, after this run's, never dropped
            log.info("kept %d rows of an earlier run outside this selection", earlier)
            self.run_info["n_prompts"] = int(frame["id"].nunique())
        frame = frame.sort_values(
            "id", key=lambda s: s.map(order).fillna(len(order)), kind="stable"
        ).reset_index(drop=True)
        self.run_info.update(status="complete", **info)
        result = self.result_cls(frame, self.run_info)
        if self.out is not None:
            self.run_info["rows_written"] = len(frame)
            write_csv_atomic(frame, self.writer.path)
            result.save(self.out, overwrite=True, figures=False)  # a study that adds tables saves again
        return result


__all__ = ["RUN_KEYS", "SHARD_BATCHES", "PerPrompt", "RowStore", "run_per_prompt"]
