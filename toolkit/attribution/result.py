"""The result of an attribution run: word scores, per-prompt margins, method records, faithfulness and
deletion curves, with provenance. `save(dir)` / `load(dir)` round-trip; viz reads only this object."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from lexprobe.toolkit.attribution.faithfulness import summarize
from lexprobe.toolkit.io.results import (
    Result,
    read_csv_table,
    read_run,
    tables_digest,
    write_csv_atomic,
    write_run,
)

ATTRIBUTION_COLUMNS = ["id", "word_index", "word", "char_start", "char_end", "score", "method"]
PROMPT_COLUMNS = [
    "id",
    "type",
    "label",
    "prompt",
    "margin",
    "margin_sampled",
    "margin_smooth",
    "refused",
    "pair_id",
]
FILES = {
    "attributions": "attributions.csv",
    "prompts": "prompts.csv",
    "methods": "methods.csv",
    "faithfulness": "faithfulness.csv",
    "curves": "deletion_curves.csv",
}


@dataclass(repr=False)
class AttributionResult(Result):
    attributions: pd.DataFrame  # ATTRIBUTION_COLUMNS: one row per (prompt, method, word)
    prompts: pd.DataFrame  # PROMPT_COLUMNS: one row per prompt (margin = the decision margin)
    methods: pd.DataFrame  # id, method, seconds, rows_forward, rows_backward, completeness_error, ...
    faithfulness: pd.DataFrame = field(default_factory=pd.DataFrame)  # id, type, method, metrics (+ _random)
    curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # id, method (or "random"), fraction, margin
    run: dict = field(default_factory=dict)
    filename = "attributions.csv"
    kind = "attribute"

    # ------------------------------------------------------------------ views
    def to_frame(self) -> pd.DataFrame:
        return self.attributions.copy()

    @property
    def method_names(self) -> list[str]:
        return list(dict.fromkeys(self.attributions["method"]))

    def words(self, prompt_id: str, method: str) -> pd.DataFrame:
        a = self.attributions
        return a[(a["id"] == prompt_id) & (a["method"] == method)].sort_values("word_index")

    def select(self, ids: list[str]) -> AttributionResult:
        """The same result for these prompt ids only, in this order."""
        order = {i: k for k, i in enumerate(ids)}

        def pick(frame):
            if not len(frame):
                return frame
            kept = frame[frame["id"].isin(order)]
            return kept.sort_values("id", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)

        return AttributionResult(
            pick(self.attributions),
            pick(self.prompts),
            pick(self.methods),
            pick(self.faithfulness),
            pick(self.curves),
            dict(self.run),
        )

    def faithfulness_by_type(self) -> pd.DataFrame:
        return summarize(self.faithfulness) if len(self.faithfulness) else pd.DataFrame()

    def agreement(self) -> pd.DataFrame:
        """For each pair of methods: mean Spearman rank correlation of their word scores over prompts
        (prompts with 3+ words), and the share of prompts where both put the same word on top."""
        methods = self.method_names
        rows = []
        for a, b in itertools.combinations(methods, 2):
            rhos, same = [], []
            for _, g in self.attributions.groupby("id", sort=False):
                x = g[g["method"] == a].sort_values("word_index")["score"].to_numpy()
                y = g[g["method"] == b].sort_values("word_index")["score"].to_numpy()
                if len(x) != len(y) or not len(x):
                    continue
                same.append(int(np.argmax(x) == np.argmax(y)))
                if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
                    rhos.append(stats.spearmanr(x, y).statistic)
            rows.append(
                {
                    "method_a": a,
                    "method_b": b,
                    "spearman_mean": float(np.mean(rhos)) if rhos else np.nan,
                    "top1_agreement": float(np.mean(same)) if same else np.nan,
                    "n_prompts": len(same),
                }
            )
        return pd.DataFrame(
            rows, columns=["method_a", "method_b", "spearman_mean", "top1_agreement", "n_prompts"]
        )

    def top_words(self) -> pd.DataFrame:
        """The highest-scoring word of every (prompt, method)."""
        a = self.attributions
        idx = a.groupby(["id", "method"], sort=False)["score"].idxmax()
        return a.loc[idx].reset_index(drop=True)

    def ig_summary(self) -> str | None:
        """One line on integrated gradients' completeness errors and steps, where it ran."""
        m = self.methods
        ig = m[m["method"] == "integrated_gradients"] if len(m) and "method" in m else m.iloc[0:0]
        if not len(ig):
            return None
        return (
            f"integrated gradients: completeness error max {ig['completeness_error'].max():.4f}, "
            f"median {ig['completeness_error'].median():.4f}, steps median {int(ig['steps'].median())}"
        )

    def overview(self) -> pd.DataFrame:
        """Per prompt and method: the margin and the top word."""
        tops = self.top_words()[["id", "method", "word", "score"]].rename(columns={"word": "top_word"})
        cols = [c for c in ("id", "type", "margin", "refused") if c in self.prompts.columns]
        return self.prompts[cols].merge(tops, on="id", how="left")

    # ------------------------------------------------------------------ persistence
    def _write(self, out: Path) -> None:
        written = []
        for attr, name in FILES.items():
            frame = getattr(self, attr)
            if len(frame.columns):
                write_csv_atomic(frame, out / name)
                written.append(name)
            elif (out / name).exists():  # nothing measured this time: no stale table either
                (out / name).unlink()
        derived = {
            "faithfulness_by_type.csv": self.faithfulness_by_type if len(self.faithfulness) else None,
            "agreement.csv": self.agreement if len(self.method_names) > 1 else None,
        }
        for name, table in derived.items():
            if table is not None:
                write_csv_atomic(table(), out / name)
                written.append(name)
            else:  # not measured this time: no stale table of an earlier run either
                (out / name).unlink(missing_ok=True)
        self.run["tables_sha256"] = tables_digest(out, written)
        write_run(out, self.run, self.kind)

    def _figures(self, out: Path) -> None:
        """heatmap.html, heatmap.png (every method, one colour scale), faithfulness.png."""
        from lexprobe.toolkit.viz import heatmaps

        heatmaps.write_heatmaps(self, out, None, ["html", "png"], overwrite=True)
        if len(self.faithfulness):
            heatmaps.faithfulness_png(self, out / "faithfulness.png")

    @classmethod
    def _read(cls, out: Path) -> AttributionResult:
        frames = {}
        for attr, name in FILES.items():
            path = out / name
            frames[attr] = read_csv_table(path) if path.exists() else pd.DataFrame()
        return cls(**frames, run=read_run(out))

    def show(self, console=None, rows: int = 30) -> None:
        """Each prompt's words coloured by each method's scores, in the terminal."""
        from lexprobe.toolkit.viz.heatmaps import print_terminal

        print_terminal(self.select(list(self.prompts["id"])[:rows]), console)
        note = self.ig_summary()
        if note:
            (console.print if console is not None else print)(note)

    def _repr_html_(self) -> str:
        import html

        from lexprobe.toolkit.viz.heatmaps import heatmap_notebook

        note = self.ig_summary()
        return heatmap_notebook(self) + (f"<p>{html.escape(note)}</p>" if note else "")
