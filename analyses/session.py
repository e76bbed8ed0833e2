"""A study's session: the loaded model under one condition (system prompt, chat template), with its
refusal readout and, where the options ask for it, the steering every forward pass runs under
(`study_session`, a `with`: the steering is on inside it and off after it, whatever happens)."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lexprobe.analyses.options import ModelOptions
from lexprobe.probes.margin import RefusalReadout
from lexprobe.toolkit.errors import InputError, LexprobeError
from lexprobe.toolkit.models.architectures import state_dict_sha256, wrap_model
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.models.loader import LoadedModel, load_model
from lexprobe.toolkit.models.templates import resolve_template, template_for
from lexprobe.toolkit.readouts.calibrate import calibration_prompts, get_readout, set_smooth_temperature

log = logging.getLogger(__name__)

# what a finished result must share with the session of a resumed run to be reused as it is
MADE_BY = (
    "model_spec",
    "weights_sha256",
    "dtype",
    "system_prompt",
    "chat_template",
    "readout_sha256",
    "steering",
)


def inputs_digest(*parts) -> str:
    """sha256 of `parts` as JSON (a table as its rows): what a study's result depends on besides its
    model and condition, recorded in its run.json as `inputs_sha256`."""
    plain = [p.to_dict("records") if hasattr(p, "to_dict") else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


@dataclass
class Session:
    """A loaded model under one system-prompt condition, with its refusal readout."""

    lm: LoadedModel
    system: SystemPrompt
    fmt: ChatFormat
    readout: RefusalReadout | None
    steering: object = None  # a probes.steering.Steering every forward pass of a study runs under
    steered_by: dict | None = None  # the chosen.json it came from (--steer): path, sha256, what it is

    def finished(self, out: Path | None, result_cls, inputs: str):
        """The result of a study that finished in `out` under this model and condition from the same
        inputs (`inputs_digest`), loaded; None where there is none, it cannot be read, or it was made
        otherwise (the study then runs again)."""
        if out is None or not (out / result_cls.filename).is_file():
            return None
        try:
            old = result_cls.load(out)
        except (LexprobeError, ValueError, KeyError, OSError) as err:  # damaged: made again, not trusted
            log.info("%s: '%s' cannot be read (%s): running it again", result_cls.kind, out, err)
            return None
        now = self.provenance()
        changed = [k for k in MADE_BY if old.run.get(k) != now.get(k)]
        if old.run.get("inputs_sha256") != inputs:
            changed.append("its inputs")
        if changed:
            log.info(
                "%s: '%s' was made otherwise (%s): running it again", result_cls.kind, out, ", ".join(changed)
            )
            return None
        if not old.intact(out):
            log.info(
                "%s: the tables in '%s' changed after they were written: running it again",
                result_cls.kind,
                out,
            )
            return None
        log.info("%s: reusing the finished result in '%s'", result_cls.kind, out)
        return old

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
        out["readout"], out["readout_sha256"] = None, None  # a study that reads no margins (generate)
        if self.readout is not None:
            out["readout"] = self.readout.describe(self.lm.tokenizer) | {"details": self.readout.details}
            out["readout_sha256"] = self.readout.sha256()
        out["steering"] = None  # a resume key: a steered run and an unsteered one never continue each other
        if self.steering is not None:
            out["steering"] = f"{self.steering.describe()} ({self.steering.key})"
        if self.steered_by is not None:
            out["steered_by"] = self.steered_by
        return out


def open_session(opts: ModelOptions, need_readout: bool = True) -> Session:
    """The model, chat format and readout of `opts` (models are cached per process: a second session
    of the same model under another condition does not load it again)."""
    system = SystemPrompt.parse(opts.system_prompt)  # validate before the (slow) model load
    resolve_template(opts.chat_template)
    lm = load_model(
        opts.model,
        dtype=opts.dtype,
        device=opts.device,
        weights_sha256=opts.weights_sha256,
        gradients=opts.gradients,
        verify_weights=opts.verify_weights,
        device_map=opts.device_map,
    )
    return _session(lm, system, opts, need_readout)


def session_from_model(model, tokenizer, opts: ModelOptions, weights_sha256: str | None = None) -> Session:
    """A session over a `*ForCausalLM` the caller loaded, on its device and in its dtype; its weights are
    hashed (for provenance and the readout cache) unless `weights_sha256` is given."""
    system = SystemPrompt.parse(opts.system_prompt)
    spread = len(set(getattr(model, "hf_device_map", {}).values())) > 1  # accelerate placed it
    device = None if spread else next(model.parameters()).device
    sha = weights_sha256 or state_dict_sha256(model)
    source = f"a {type(model).__name__} loaded by the caller ({getattr(model.config, 'name_or_path', '') or 'no path'})"
    lm = wrap_model(model, tokenizer, spec=opts.model, source=source, sha=sha, device=device)
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


def with_harmfulness(run_info: dict, probe, columns=(), extra_columns=()) -> list[str]:
    """A study's columns with the harmfulness probe's (none when `probe` is None); run.json records
    which probe (a run with a probe and one without never continue each other)."""
    run_info["harmfulness_probe"] = None
    run_info["harmfulness_probe_sha256"] = None
    if probe is None:
        return list(columns)
    run_info["harmfulness_probe"] = {"layer": probe.layer, "position": probe.position, "method": probe.method}
    run_info["harmfulness_probe_sha256"] = probe.sha256()
    return [*columns, *extra_columns]


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
            "file": str(opts.steer),
            "sha256": record["sha256"],
            "mitigation": record.get("mitigation"),
            "strength": record.get("strength"),
            "gate": record.get("gate"),
            "coefficient": record.get("coefficient"),
        }
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
            opts.ablate_direction,
            opts.add_direction,
        )
    direction = direction_of(session, opts)
    try:
        return direction.steering(ablate=opts.ablate_direction or 0.0, add=opts.add_direction or 0.0)
    except ValueError as err:  # a direction out of range for steering (its norm)
        raise InputError(f"cannot steer with the direction: {err}") from None


@contextmanager
def study_session(
    opts: ModelOptions,
    session: Session | None = None,
    need_readout: bool = True,
    reads_direction: bool = False,
) -> Iterator[Session]:
    """The session a study was handed (the Python API loads the model once per probe), else a new one,
    with its steering on inside the `with` (a study run inside another shares the outer one's). A
    direction given to a study that neither reads it (`reads_direction`) nor steers with it is an
    InputError, never silently unused."""
    unread = not (reads_direction or opts.ablate_direction or opts.add_direction)
    if session is None and opts.direction is not None and unread:  # (a study inside another: its session)
        raise InputError(
            "--direction is read by --ablate-direction and --add-direction, and by pathway, mitigate, "
            "harmfulness and diagnose: give one of them, or drop --direction"
        )
    if session is None:
        session = open_session(opts, need_readout or opts.steers)
    from lexprobe.probes.steering import steered

    with steered(session.lm, session.steering):
        yield session
