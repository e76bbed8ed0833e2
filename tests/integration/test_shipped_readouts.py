"""The readouts shipped for the default model are what calibration makes: one condition recalibrated
here (float32, no system prompt: about 3 minutes on 2 cores) gives the shipped trie and temperature."""

from __future__ import annotations

import pytest

from lexprobe import prompts
from lexprobe.probes.readout import ReadoutSettings, load_readout_file
from lexprobe.toolkit.models.chat import ChatFormat, SystemPrompt
from lexprobe.toolkit.readouts.calibrate import SHIPPED, _cache_key, calibrate

pytestmark = pytest.mark.slow


def test_calibrating_here_reproduces_the_shipped_readout(default_lm):
    fmt = ChatFormat(default_lm.tokenizer, SystemPrompt.parse("none"))
    settings = ReadoutSettings()
    path = prompts.path(SHIPPED) / f"{_cache_key(default_lm, fmt, settings)}.json"
    shipped = load_readout_file(str(path), len(default_lm.tokenizer))
    made, table = calibrate(default_lm, fmt, settings)
    assert made.details["train_refusal_rate"] == shipped.details["train_refusal_rate"]
    assert made.details["val_auroc"] == shipped.details["val_auroc"]
    assert made.sha256() == shipped.sha256()  # the same trie and smooth temperature
