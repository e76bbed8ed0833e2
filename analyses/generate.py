"""`lexprobe generate`: greedy completions for a suite, written as they finish (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lexprobe.analyses.common import (
    RUN_KEYS,
    ModelOptions,
    ResumableRun,
    Session,
    SuiteOptions,
    open_suite,
    session_for,
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
    resume: bool = False
    overwrite: bool = False


class CompletionsResult(TableResult):
    filename = "completions.csv"
    numeric_columns = ("n_tokens",)


def run(
    config: GenerateConfig, session: Session | None = None, suite: Suite | None = None
) -> CompletionsResult:
    suite = suite or open_suite(config.suite)
    session = session_for(config.model, session, need_readout=False)
    run_info = provenance(
        **session.lm.provenance(),
        system_prompt=session.system.describe(),
        study="generate",
        suite=suite.source,
        suite_sha256=suite.full.sha256,
        n_prompts=len(suite),
        max_new_tokens=config.max_new_tokens,
        decoding="greedy",
        status="running",
    )
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

    if len(todo):
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
