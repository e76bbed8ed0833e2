"""Progress bars: what they draw in a terminal of zero width and in a notebook without ipywidgets."""

from __future__ import annotations

import io
import os
import sys

from lexprobe.toolkit.io import progress as P


class Terminal(io.StringIO):
    def fileno(self) -> int:  # a terminal's descriptor; its size comes from os.get_terminal_size
        return 2


def test_a_zero_width_terminal_gets_80_columns_and_a_bar_stays_with_its_rate(monkeypatch):
    monkeypatch.delenv("LEXPROBE_QUIET", raising=False)
    monkeypatch.setattr(P, "in_notebook", lambda: False)
    monkeypatch.setattr(os, "get_terminal_size", lambda fd=None: os.terminal_size((0, 24)))
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    bar = P.progress(range(3), desc="scoring")
    assert bar.ncols == 80 and not bar.dynamic_ncols
    list(bar)
    assert "3/3" in err.getvalue() and "it/s" in err.getvalue()  # left drawn, rate included


def test_in_a_notebook_without_ipywidgets_bars_are_plain_lines_and_never_nested(monkeypatch):
    monkeypatch.delenv("LEXPROBE_QUIET", raising=False)
    monkeypatch.setattr(P, "in_notebook", lambda: True)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)  # import fails
    P.close_bars()
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    outer = P.progress(range(2), desc="outer")
    inner = P.progress(range(2), desc="inner")
    assert not outer.disable and inner.disable and outer.ascii
    list(inner)
    list(outer)
    assert "\x1b[" not in err.getvalue() and "outer" in err.getvalue()


def test_counts_read_as_english():
    assert [P.count(n, "prompt") for n in (0, 1, 2)] == ["0 prompts", "1 prompt", "2 prompts"]
