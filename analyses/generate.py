"""`lexprobe generate`: greedy completions for a suite, written as they finish (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lexprobe.analyses.options import ModelOptions, ParallelOptions, SuiteOptions
from lexprobe.analyses.runner import PerPrompt, run_per_prompt
from lexprobe.analyses.session import Session
from lexprobe.toolkit.behaviour.generation import generate
from lexprobe.toolkit.config import Options
from lexprobe.toolkit.io.progress import count
from lexprobe.toolkit.io.results import TableResult
from lexprobe.toolkit.io.suites import Suite

COLUMNS = ["id", "type", "label", "prompt", "completion", "n_tokens", "stopped"]
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


def generate_shard(worker, records: list[dict], max_new_tokens: int):
    """A shard's greedy completions on a Ray worker (`toolkit.distributed.Worker`)."""
    texts, ids = [r["prompt"] for r in records], [r["id"] for r in records]
    return generate(worker.lm, worker.fmt, texts, max_new_tokens, worker.batch_size, desc="worker", ids=ids)


class Generation(PerPrompt):
    result_cls = CompletionsResult
    columns = COLUMNS
    needs_readout = False

    def __init__(self, config):
        super().__init__(config)
        self.batch_size = config.model.generate_batch_size  # completions decoded together

    def prepare(self) -> tuple[dict, dict]:
        return {"max_new_tokens": self.config.max_new_tokens, "decoding": "greedy"}, {}

    def local(self, records: list[dict], emit) -> None:
        s = self.session
        generate(
            s.lm,
            s.fmt,
            [r["prompt"] for r in records],
            self.config.max_new_tokens,
            self.batch_size,
            desc=f"generating {count(len(records), 'completion')}",
            on_batch=emit,
            ids=[r["id"] for r in records],
        )

    remote = staticmethod(generate_shard)

    def remote_args(self) -> tuple:
        return (self.config.max_new_tokens,)

    def rows(self, records: list[dict], completions) -> list[dict]:
        return [
            {
                **{k: rec[k] for k in ("id", "type", "label", "prompt")},
                "completion": c.text,
                "n_tokens": len(c.token_ids),
                "stopped": c.stopped,
            }
            for rec, c in zip(records, completions)
        ]


def run(
    config: GenerateConfig, session: Session | None = None, suite: Suite | None = None
) -> CompletionsResult:
    return run_per_prompt(Generation(config), session, suite)
