"""`lexprobe generate`: greedy completions for a suite, written as they finish (resumable)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from lexprobe.analyses.common import (
    RUN_KEYS,
    ModelOptions,
    ParallelOptions,
    ResumableRun,
    Session,
    SuiteOptions,
    open_suite,
    session_for,
    study,
)
from lexprobe.toolkit.behaviour.generation import generate
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.io.results import TableResult, provenance
from lexprobe.toolkit.io.suites import Suite

COLUMNS = ["id", "type", "label", "prompt", "completion", "n_tokens", "stopped"]
RESUME_KEYS = (*RUN_KEYS, "max_new_tokens")
DEFAULT_MAX_NEW_TOKENS = 128


@dataclass(kw_only=True)
class GenerateConfig(Options):
    out: str | None = None  # None: keep the completions in memory (the Python API), write nothing
    model: ModelOptions = field(default_factory=ModelOptions)
    suite: SuiteOptions = field(default_factory=SuiteOptions)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    parallel: ParallelOptions = field(default_factory=ParallelOptions)  # shard over Ray
    resume: bool = False
    overwrite: bool = False


class CompletionsResult(TableResult):
    filename = "completions.csv"
    kind = "generate"
    numeric_columns = ("n_tokens",)


@study
def run(
    config: GenerateConfig, session: Session | None = None, suite: Suite | None = None
) -> CompletionsResult:
    suite = suite or open_suite(config.suite)
    config.parallel.check()  # a wrong --ray-address fails here, not after the model loads
    session = session_for(config.model, session, need_readout=False)
    run_info = provenance(
        **session.provenance(),  # the steering too, a resume key
        kind=CompletionsResult.kind,
        suite=suite.source,
        suite_sha256=suite.full.sha256,
        n_prompts=len(suite),
        max_new_tokens=config.max_new_tokens,
        decoding="greedy",
        status="running",
    )
    if config.parallel.active:  # not a resume key: single-process and sharded runs continue each other
        run_info["sharding"] = asdict(config.parallel)
    out = ResumableRun(
        config.out, CompletionsResult, COLUMNS, run_info, suite, config.resume, config.overwrite, RESUME_KEYS
    )
    todo = out.todo

    def write(indices, completions):
        out.write(
            [
                {
                    **{k: todo.iloc[i][k] for k in ("id", "type", "label", "prompt")},
                    "completion": c.text,
                    "n_tokens": len(c.token_ids),
                    "stopped": c.stopped,
                }
                for i, c in zip(indices, completions)
            ]
        )

    if len(todo) and config.parallel.active:
        desc = f"generating {len(todo)} completions"
        config.parallel.run(
            session, config.model.batch_size, todo, generate_shard, (config.max_new_tokens,), write, desc
        )
    elif len(todo):
        texts = todo["prompt"].tolist()
        desc = f"generating {len(todo)} completions"
        generate(
            session.lm,
            session.fmt,
            texts,
            config.max_new_tokens,
            config.model.batch_size,
            desc=desc,
            on_batch=write,
        )
    return out.finish(n_generated_this_run=len(todo))


def generate_shard(worker, texts: list[str], ids: list[str], max_new_tokens: int):
    """A shard's greedy completions on a Ray worker (`toolkit.distributed.Worker`)."""
    return generate(worker.lm, worker.fmt, texts, max_new_tokens, worker.batch_size, desc="worker", ids=ids)
