"""Sharded runs on Ray: each actor holds one model replica under one condition and runs the shards of a
study it is handed (scoring, generation, attribution), while the driver streams their rows into the
same resumable output a single process writes.

`Cluster(replica, workers, address, num_gpus)` starts a local Ray cluster (or joins the one at
`address`) and `workers` actors, one CPU (or `num_gpus` GPUs) each. The driver's readout travels to the
actors as JSON, so nothing is calibrated twice. An actor whose process dies is restarted and the shard
it held is run again (Ray's `max_restarts` / `max_task_retries`): a killed worker costs its shard, not
the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

from lexprobe.toolkit.errors import InputError

RESTARTS = 2  # times a dead actor is restarted (and its shard retried) before the run fails


@dataclass(frozen=True)
class Replica:
    """What an actor needs to build the driver's session again. `dtype` and `device` are what the
    driver resolved (a GPU actor uses its own GPU); the readout is the driver's, as JSON."""

    model: str
    dtype: str
    device: str
    weights_sha256: str | None
    system: object  # the driver's SystemPrompt
    readout_json: str | None  # None: a study that reads no margins (generate)
    batch_size: int
    device_map: str | dict | None = None  # the driver's --device-map: each replica spreads over its GPUs
    steering: object = None  # the driver's probes.steering.Steering, on for every shard
    template: object = None  # the driver's --chat-template (toolkit.models.templates.ChatTemplate)


class Worker:
    """One model replica (a Ray actor) under the driver's condition. A study hands it work as a
    function of the worker and a shard (`call`), defined in the study's own module: the functions
    travel by reference, so an actor runs the same code as the driver."""

    def __init__(self, replica: Replica, threads: int):
        import torch

        from lexprobe.probes.margin import RefusalReadout
        from lexprobe.toolkit.models.chat import ChatFormat
        from lexprobe.toolkit.models.loader import load_model

        torch.set_num_threads(threads)
        device = (
            "cuda" if torch.cuda.is_available() and os.environ.get("CUDA_VISIBLE_DEVICES") else replica.device
        )
        if replica.device_map is not None:
            device = "auto"
        self.lm = load_model(
            replica.model, replica.dtype, device, replica.weights_sha256, device_map=replica.device_map
        )
        self.fmt = ChatFormat(self.lm.tokenizer, replica.system, replica.template)
        self.batch_size = replica.batch_size
        self.readout = (
            None if replica.readout_json is None else RefusalReadout.from_json(replica.readout_json)
        )
        self._scorer = None
        self._built: dict = {}
        self.steering = replica.steering

    @property
    def scorer(self):
        """The replica's `Scorer` (its shared-prefix cache built once)."""
        if self._scorer is None:
            from lexprobe.toolkit.scoring.scorer import Scorer

            self._scorer = Scorer(self.lm, self.fmt, self.readout, self.batch_size)
        return self._scorer

    def memo(self, key, build):
        """What a study builds once per replica and reuses over its shards (perturb's substitution
        engine), under `key`: `build()` the first time."""
        if key not in self._built:
            self._built[key] = build()
        return self._built[key]

    def pid(self) -> int:
        return os.getpid()

    def call(self, fn, *args):
        from lexprobe.probes.steering import steered

        with steered(self.lm, self.steering):
            return fn(self, *args)


def _ray():
    try:
        import ray
    except ImportError as err:
        raise InputError("--workers and --ray-address need Ray: pip install 'lexprobe[distributed]'") from err
    return ray


def check(address: str | None, timeout: float = 5.0) -> None:
    """Ray can be imported and a `host:port` address answers, before any model loads: Ray itself
    retries a wrong address for minutes. ("auto" and ray:// addresses are left to Ray.)"""
    import socket

    _ray()
    if not address or address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InputError(f"--ray-address '{address}' is not host:port (or auto, or ray://host:port)")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise InputError(
            f"no Ray cluster answers at --ray-address {address} ({err.strerror or err}): "
            "start one with `ray start --head`, or leave the flag out to start one here"
        ) from err


class Cluster:
    """A context manager: Ray and `workers` actors of `Worker`; `run` hands them a study's jobs."""

    def __init__(
        self, replica: Replica, workers: int, address: str | None = None, num_gpus: float | None = None
    ):
        if workers < 1:
            raise InputError(f"--workers must be at least 1, got {workers}")
        self.replica, self.workers, self.address, self.num_gpus = replica, workers, address, num_gpus
        self.actors: list = []
        self._started = False

    def __enter__(self) -> Cluster:
        self.ray = ray = _ray()
        if not ray.is_initialized():
            try:
                quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
                if self.address:
                    ray.init(address=self.address, **quiet)
                else:
                    ray.init(num_cpus=self.workers, include_dashboard=False, **quiet)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise InputError(
                    f"cannot start or join a Ray cluster at {self.address or 'this machine'}: {err}"
                ) from err
            self._started = True
        have = ray.cluster_resources()
        gpus = self.num_gpus
        if gpus is None:  # one GPU an actor where the cluster has GPUs
            gpus = 1.0 if have.get("GPU", 0) >= 1 else 0.0
        if gpus * self.workers > have.get("GPU", 0):  # Ray would wait for them forever
            self.__exit__()
            raise InputError(
                f"{self.workers} workers x {gpus:g} GPUs need {gpus * self.workers:g} GPUs and the Ray cluster "
                f"has {have.get('GPU', 0):g}: lower --num-gpus or --workers"
            )
        if self.workers > have.get("CPU", 0):
            self.__exit__()
            raise InputError(
                f"{self.workers} workers need a CPU each and the Ray cluster has {have.get('CPU', 0):g}: lower --workers"
            )
        actor = ray.remote(num_cpus=1, num_gpus=gpus, max_restarts=RESTARTS, max_task_retries=RESTARTS)(
            Worker
        )
        self.actors = [actor.remote(self.replica, 1) for _ in range(self.workers)]
        return self

    def __exit__(self, *exc) -> None:
        for a in self.actors:
            self.ray.kill(a)
        self.actors = []
        if self._started:
            self.ray.shutdown()

    def run(self, fn, jobs: list[tuple]) -> Iterator[tuple[int, object]]:
        """(job index, fn(worker, *job) on an actor) as jobs finish. Each actor has at most two jobs in
        hand, and takes the next when one is done."""
        ray = self.ray
        queue = list(range(len(jobs)))[::-1]
        running: dict = {}  # object ref -> (job index, actor)

        def submit(actor):
            if queue:
                k = queue.pop()
                running[actor.call.remote(fn, *jobs[k])] = (k, actor)

        for _ in range(2):
            for a in self.actors:
                submit(a)
        while running:
            (ref,), _ = ray.wait(list(running), num_returns=1)
            k, actor = running.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as err:
                raise RuntimeError(
                    f"shard {k} failed on a Ray worker after {RESTARTS} retries: {err}"
                ) from err
            submit(actor)
            yield k, result


def run_shards(cluster: Cluster, fn, jobs: list[tuple], desc: str) -> Iterator[tuple[int, object]]:
    """`cluster.run`'s (job index, result) pairs, with a progress bar counting shards."""
    from lexprobe.toolkit.io.progress import progress

    yield from progress(cluster.run(fn, jobs), desc=desc, total=len(jobs), unit="shard")
