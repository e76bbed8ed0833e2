"""What every study shares: model, condition and suite options, the loaded session, and where rows go
(a resumable output directory, or memory when a study runs from the Python API with no `out`)."""

from __future__ import annotations

import functools
import logging
from contextlib import ExitStack
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from lexprobe.probes.margin import RefusalReadout
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.results import Timer, claim, read_csv_table, write_csv_atomic, write_run
from lexprobe.toolkit.io.rows import RowWriter, check_resumable, check_rows_match
from lexprobe.toolkit.io.suites import Suite, load_suite
from lexprobe.toolkit.models.architectures import state_dict_sha256, wrap_model
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.models.loader import LoadedModel, load_model
from lexprobe.toolkit.models.templates import resolve_template, template_for
from lexprobe.toolkit.readouts.calibrate import calibration_prompts, get_readout, set_smooth_temperature

log = logging.getLogger(__name__)
# What every resumed run must share with the one it continues (each study adds its own settings)
RUN_KEYS = (
    "kind", "model_spec", "weights_sha256", "dtype", "system_prompt", "chat_template", "steering", "suite",
    "suite_sha256",
)  # fmt: skip


@dataclass(kw_only=True)
class ModelOptions(Options):
    model: str = "default"
    system_prompt: str = "model-default"
    chat_template: object = None  # a family, a Jinja file, "none" or a ChatTemplate (None: the model's own)
    dtype: str = "auto"
    device: str = "auto"
    device_map: str | dict | None = None  # spread the model over devices (toolkit.models.placement)
    weights_sha256: str | None = None
    verify_weights: bool = False  # hash the weights again rather than trust the record of their hash
    batch_size: int = 16
    readout: str | Path | RefusalReadout | None = None  # a readout (or its JSON file) instead of calibrating
    recalibrate: bool = False  # calibrate the readout here even where one is cached or shipped
    gradients: bool = False  # the run attributes: --dtype auto loads float32 (toolkit.models.devices)
    # steering with the refusal direction (probes.steering) for every forward pass of the study
    direction: object = (
        None  # a direction.json of `lexprobe direction`, or a RefusalDirection (none: this model's)
    )
    ablate_direction: float | None = None  # remove this share of the direction everywhere (1: all)
    add_direction: float | None = None  # add this multiple of the direction at its own layer
    steer: object = None  # a chosen.json of `lexprobe mitigate` (or its folder): its steering on every pass

    @property
    def steers(self) -> bool:
        return bool(self.ablate_direction) or bool(self.add_direction) or self.steer is not None


SHARD_BATCHES = 4  # batches in one shard of a sharded run (its unit of work and of retry)


@dataclass(kw_only=True)
class ParallelOptions(Options):
    """Sharding over Ray (`toolkit.distributed`): off unless `workers` or `ray_address` is given."""

    workers: int | None = None  # model replicas (Ray actors); 2 when only ray_address is given
    ray_address: str | None = None  # join this Ray cluster instead of starting one on this machine
    num_gpus: float | None = None  # GPUs per replica (none: 1 where the cluster has GPUs, else 0)

    @property
    def active(self) -> bool:
        return self.workers is not None or self.ray_address is not None

    def check(self) -> None:
        """Ray is installed and the address answers (before the model loads); nothing when inactive."""
        if self.ray_address is not None and not self.ray_address.strip():
            raise InputError("--ray-address is empty: give host:port, auto, or leave the flag out")
        if self.num_gpus is not None and not self.active:
            raise InputError("--num-gpus needs --workers or --ray-address (a single process uses --device)")
        if self.active:
            from lexprobe.toolkit.distributed import check

            check(self.ray_address)

    def cluster(self, session: Session, batch_size: int):
        """The Ray cluster of these options, its actors replicas of `session` (a context manager)."""
        from lexprobe.toolkit.distributed import Cluster, Replica

        lm = session.lm
        replica = Replica(
            model=lm.spec, dtype=str(lm.dtype).removeprefix("torch."), device=str(lm.device),
            weights_sha256=lm.weights_sha256, system=session.system, device_map=lm.extra.get("placement"),
            steering=session.steering, template=session.fmt.template,
            readout_json=session.readout.to_json() if session.readout is not None else None,
            batch_size=batch_size,
        )  # fmt: skip
        return Cluster(replica, self.workers or 2, self.ray_address, self.num_gpus)

    def run(
        self,
        session: Session,
        batch_size: int,
        todo: pd.DataFrame,
        fn,
        extra: tuple,
        write,
        desc: str,
    ):
        """`todo`'s prompts in shards of SHARD_BATCHES batches, each `fn(worker, texts, ids, *extra)` on an
        actor (`toolkit.distributed.Worker`); `write(todo indices, result)` as each shard comes back."""
        import numpy as np

        from lexprobe.toolkit.io.progress import progress

        size = SHARD_BATCHES * batch_size
        shards = [np.arange(i, min(i + size, len(todo))) for i in range(0, len(todo), size)]
        texts, ids = todo["prompt"].tolist(), todo["id"].tolist()
        jobs = [([texts[i] for i in s], [ids[i] for i in s], *extra) for s in shards]
        with self.cluster(session, batch_size) as cluster:
            bar = f"{desc} on {cluster.workers} Ray workers"
            for k, result in progress(cluster.run(fn, jobs), desc=bar, total=len(shards), unit="shard"):
                write(list(shards[k]), result)


@dataclass(kw_only=True)
class SuiteOptions(Options):
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
    readout: RefusalReadout | None
    steering: object = None  # a probes.steering.Steering every forward pass of a study runs under
    steered_by: dict | None = None  # the chosen.json it came from (--steer): path, sha256, what it is

    def ensure_smooth_temperature(self, batch_size: int = 32) -> None:
        """A readout file without the smooth margin's temperature gets one, chosen on the calibration
        prompts as calibration does (a calibrated readout has it already)."""
        if self.readout.smooth_temperature is None:
            set_smooth_temperature(
                self.lm, self.fmt, self.readout, calibration_prompts(), max(batch_size, 32)
            )

    def provenance(self) -> dict:
        out = {
            **self.lm.provenance(),
            "system_prompt": self.fmt.system.describe(),
            "system_prompt_placement": self.fmt.placement,
            "chat_template": self.fmt.template_record(),
        }
        if self.readout is not None:
            out["readout"] = self.readout.describe(self.lm.tokenizer) | {"details": self.readout.details}
            out["readout_sha256"] = self.readout.sha256()
        if self.steering is not None:
            out["steering"] = f"{self.steering.describe()} ({self.steering.key})"
        if self.steered_by is not None:
            out["steered_by"] = self.steered_by
        return out


def open_suite(opts: SuiteOptions) -> Suite:
    suite = load_suite(opts.suite, opts.prompt_column, opts.id_column, opts.type_column, opts.label_column)
    return suite.select(opts.types or None, opts.ids or None, opts.limit)


def open_session(opts: ModelOptions, need_readout: bool = True) -> Session:
    """The model, chat format and readout of `opts` (models are cached per process: a second session
    of the same model under another condition does not load it again)."""
    system = SystemPrompt.parse(opts.system_prompt)  # validate before the (slow) model load
    resolve_template(opts.chat_template)
    lm = load_model(
        opts.model, opts.dtype, opts.device, opts.weights_sha256, opts.gradients, opts.verify_weights,
        opts.device_map,
    )  # fmt: skip
    return _session(lm, system, opts, need_readout)


def session_from_model(model, tokenizer, opts: ModelOptions, weights_sha256: str | None = None) -> Session:
    """A session over a `*ForCausalLM` the caller loaded, on its device and in its dtype; its weights are
    hashed (for provenance and the readout cache) unless `weights_sha256` is given."""
    system = SystemPrompt.parse(opts.system_prompt)
    spread = len(set(getattr(model, "hf_device_map", {}).values())) > 1  # accelerate placed it
    device = None if spread else next(model.parameters()).device
    sha = weights_sha256 or state_dict_sha256(model)
    source = f"a {type(model).__name__} loaded by the caller ({getattr(model.config, 'name_or_path', '') or 'no path'})"
    lm = wrap_model(model, tokenizer, opts.model, source, sha, device)
    lm.extra["dtype_reason"] = "the caller's model, in its own dtype"
    return _session(lm, system, opts, True)


def _session(lm: LoadedModel, system: SystemPrompt, opts: ModelOptions, need_readout: bool) -> Session:
    fmt = ChatFormat(lm.tokenizer, system, template_for(lm, opts.chat_template))
    readout = None
    if need_readout:
        from lexprobe.probes.readout import load_readout_file

        if isinstance(opts.readout, RefusalReadout):
            readout = opts.readout
        elif opts.readout:
            readout = load_readout_file(str(opts.readout), vocab_size=len(lm.tokenizer))
        else:
            readout = get_readout(lm, fmt, batch_size=opts.batch_size, rebuild=opts.recalibrate)
    session = Session(lm, system, fmt, readout)
    if opts.steers:
        session.steering = steering_of(session, opts)
    return session


def direction_of(session: Session, opts: ModelOptions):
    """`opts.direction` (a direction.json or a RefusalDirection), else this model's and condition's
    refusal direction (`lexprobe direction`: cached, found here the first time)."""
    from lexprobe.toolkit.mechanism.direction import find_direction, load_direction, template_positions
    from lexprobe.toolkit.scoring.scorer import Scorer

    scorer = Scorer(session.lm, session.fmt, session.readout, opts.batch_size)
    if opts.direction:
        direction = load_direction(opts.direction, session.lm.text_config.hidden_size, len(session.lm.layers))
        direction.check(f"--direction '{opts.direction}'", n_positions=template_positions(scorer))
        return direction
    return find_direction(scorer, session.fmt.describe(), info=session.provenance())[0]


def harmfulness_of(session: Session, source=True, batch_size: int = 16):
    """The harmfulness probe `source` names: a probe.json of `lexprobe harmfulness` (or its folder), a
    HarmfulnessProbe, or True: this model's and condition's (cached, fitted here the first time)."""
    from lexprobe.probes.harmfulness import load_probe
    from lexprobe.toolkit.mechanism.harmfulness import find_probe
    from lexprobe.toolkit.scoring.scorer import Scorer
    from lexprobe.toolkit.substitution.frames import calibration_sets

    if source is not True:
        return load_probe(source, session.lm)
    scorer = Scorer(session.lm, session.fmt, session.readout, batch_size)
    return find_probe(scorer, session.fmt.describe(), calibration_sets, info=session.provenance())[0]


def probe_option(session: Session, option, batch_size: int = 16):
    """A study's `harmfulness` option resolved: None when off (False or None), else `harmfulness_of`'s."""
    if option is False or option is None:
        return None
    return harmfulness_of(session, option, batch_size)


def with_harmfulness(run_info: dict, probe, columns, keys, extra_columns) -> tuple[list, tuple]:
    """A per-prompt study's columns and resume keys with the harmfulness probe's (none when `probe` is
    None); run.json records which probe."""
    keys = (*keys, "harmfulness_probe_sha256")  # a run with a probe and one without never continue each other
    if probe is None:
        return list(columns), keys
    run_info["harmfulness_probe"] = {"layer": probe.layer, "position": probe.position, "method": probe.method}
    run_info["harmfulness_probe_sha256"] = probe.sha256()
    return [*columns, *extra_columns], keys


def steering_of(session: Session, opts: ModelOptions):
    """The steering `opts` ask for: a chosen.json's (`--steer`), or `direction_of`'s direction ablated or
    added."""
    if opts.steer is not None:
        from lexprobe.toolkit.mechanism.fixes import load_chosen

        if opts.ablate_direction or opts.add_direction or opts.direction:
            raise InputError(
                "--steer applies a chosen fix on its own: drop --direction/--ablate-direction/--add-direction"
            )
        steering, record = load_chosen(opts.steer, session.lm)
        session.steered_by = {
            "file": str(opts.steer), "sha256": record["sha256"], "mitigation": record.get("mitigation"),
            "strength": record.get("strength"), "gate": record.get("gate"), "coefficient": record.get("coefficient"),
        }  # fmt: skip
        return steering
    if opts.ablate_direction and opts.add_direction:
        raise InputError(
            "--ablate-direction removes the very direction --add-direction adds (everywhere, after it is "
            "added): give one of them"
        )
    if (opts.ablate_direction or 0) > 1 or abs(opts.add_direction or 0) > 2:
        log.warning(
            "the refusal direction is selected by ablating it whole (1) and adding it once (1): at "
            "--ablate-direction %s / --add-direction %s the margins are extrapolation, so check them "
            "against generations",
            opts.ablate_direction, opts.add_direction,
        )  # fmt: skip
    direction = direction_of(session, opts)
    try:
        return direction.steering(ablate=opts.ablate_direction or 0.0, add=opts.add_direction or 0.0)
    except ValueError as err:  # a direction out of range for steering (its norm)
        raise InputError(f"cannot steer with the direction: {err}") from None


_STUDY: ContextVar[ExitStack | None] = ContextVar("lexprobe_study", default=None)


def study(run):
    """A study's `run`: the steering of the session it opens (`session_for`) is on for the whole run and
    off after it, whatever happens. A study run inside another shares the outer one's steering."""

    @functools.wraps(run)
    def wrapper(*args, **kwargs):
        with ExitStack() as stack:
            token = _STUDY.set(stack)
            try:
                return run(*args, **kwargs)
            finally:
                _STUDY.reset(token)

    return wrapper


def session_for(
    opts: ModelOptions, session: Session | None, need_readout: bool = True, reads_direction: bool = False
) -> Session:
    """The session a study was handed (the Python API loads the model once per probe), else a new one;
    its steering on until the study (`study`) ends. A direction given to a study that neither reads it
    (`reads_direction`) nor steers with it is an InputError, never silently unused."""
    unread = not (reads_direction or opts.ablate_direction or opts.add_direction)
    if session is None and opts.direction is not None and unread:  # (a study inside another: its session)
        raise InputError(
            "--direction is read by --ablate-direction and --add-direction, and by pathway, mitigate, "
            "harmfulness and diagnose: give one of them, or drop --direction"
        )
    if session is None:
        session = open_session(opts, need_readout or opts.steers)
    if session.steering is not None:
        from lexprobe.probes.steering import steered

        stack = _STUDY.get()
        if stack is None:
            raise RuntimeError(
                "a steered session is used by a study: decorate its run with analyses.common.study"
            )
        stack.enter_context(steered(session.lm, session.steering))
    return session


class ResumableRun:
    """Where a per-prompt study's rows go. With an output directory: appended to its CSV as they finish,
    `resume` skips ids already written, run.json carries provenance from the start. Without one (`out`
    None, the Python API): kept in memory, nothing written. `finish` restores suite order."""

    def __init__(
        self,
        out: str | None,
        result_cls,
        columns,
        run_info: dict,
        suite: Suite,
        resume,
        overwrite,
        resume_keys,
    ):
        self.out, self.result_cls, self.run_info, self.suite = (
            (Path(out) if out else None),
            result_cls,
            run_info,
            suite,
        )
        self.columns = columns
        self.timer = Timer()
        self.rows: list[dict] = []
        self.writer = None
        done: set[str] = set()
        if self.out is not None:
            claim(self.out, result_cls.kind)
            old = check_resumable(self.out, run_info, resume_keys, result_cls.filename) if resume else {}
            self.writer = RowWriter(
                self.out / result_cls.filename, columns, resume=resume, overwrite=overwrite,
                recorded=old.get("rows_written"),
            )  # fmt: skip
            check_rows_match(
                self.writer.path, self.writer.old, suite.full.frame, result_cls.one_row_per_id,
                result_cls.numeric_columns,
            )  # fmt: skip
            # run.json is written with the first rows (and again at the end)
            done = self.writer.done
        self.todo = suite.frame[~suite.frame["id"].isin(done)].reset_index(drop=True)

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
        self.run_info.update(status="complete", wall_seconds=self.timer.seconds, **info)
        result = self.result_cls(frame, self.run_info)
        if self.out is not None:
            self.run_info["rows_written"] = len(frame)
            write_csv_atomic(frame, self.writer.path)
            result.save(self.out, overwrite=True, figures=False)  # a study that adds tables saves again
        return result
