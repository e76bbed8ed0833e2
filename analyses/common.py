"""What every analysis shares: the model/condition/suite options and their set-up."""

from __future__ import annotations

from dataclasses import dataclass, field

from probes.margin import RefusalReadout
from toolkit.chat import ChatFormat, SystemPrompt
from toolkit.models import LoadedModel, load_model
from toolkit.suites import Suite, load_suite


@dataclass
class ModelOptions:
    model: str = "default"
    system_prompt: str = "model-default"
    dtype: str = "auto"
    device: str = "auto"
    weights_sha256: str | None = None
    batch_size: int = 16
    readout: str | None = None  # a readout JSON file instead of the calibrated one


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

    def provenance(self) -> dict:
        return {
            **self.lm.provenance(),
            "system_prompt": self.system.describe(),
            "readout": self.readout.describe(self.lm.tokenizer) | {"details": self.readout.details},
        }


def open_suite(opts: SuiteOptions) -> Suite:
    suite = load_suite(opts.suite, opts.prompt_column, opts.id_column, opts.type_column, opts.label_column)
    return suite.select(opts.types or None, opts.ids or None, opts.limit)


def open_session(opts: ModelOptions, need_readout: bool = True) -> Session:
    system = SystemPrompt.parse(opts.system_prompt)  # validate before the (slow) model load
    lm = load_model(opts.model, opts.dtype, opts.device, opts.weights_sha256)
    fmt = ChatFormat(lm.tokenizer, system)
    readout = None
    if need_readout:
        from probes.readout import get_readout, load_readout_file

        if opts.readout:
            readout = load_readout_file(opts.readout, vocab_size=len(lm.tokenizer))
        else:
            readout = get_readout(lm, fmt, batch_size=opts.batch_size)
    return Session(lm, system, fmt, readout)
