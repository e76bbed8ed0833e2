"""The options every study shares: which model and condition (`ModelOptions`), which prompts
(`SuiteOptions`), and how to shard over Ray (`ParallelOptions`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lexprobe.probes.margin import RefusalReadout
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.errors import InputError
from lexprobe.toolkit.io.suites import Suite, load_suite


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
    # completions decoded together: a decode step reads every weight for one token a row, so on a CPU a
    # step of 48 rows costs about 1.3x one of 16 (docs/behaviour.md)
    generate_batch_size: int = 48
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


def open_suite(opts: SuiteOptions) -> Suite:
    suite = load_suite(opts.suite, opts.prompt_column, opts.id_column, opts.type_column, opts.label_column)
    return suite.select(opts.types or None, opts.ids or None, opts.limit)
