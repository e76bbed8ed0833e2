"""Unit tests run as on a CPU without native bf16: `--dtype auto` then takes float32, so their numbers
are the same whichever CPU runs them. The bf16 paths are tested by naming `--dtype bfloat16`, and the
auto policy on both kinds of CPU by tests that set the CPU's kind themselves (test_models.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _auto_dtype_is_float32():
    """For the whole session, module- and session-scoped fixtures included (a test may set the CPU's kind
    itself with its own monkeypatch, undone when it ends)."""
    from lexprobe.toolkit.models import devices

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(devices, "cpu_has_fast_bf16", lambda: False)
        yield
