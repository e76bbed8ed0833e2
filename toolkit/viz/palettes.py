"""Colours, colour scales and colour bars shared by every figure, and the one `save` they all use.

- Signed word scores: ColorBrewer's diverging PuOr (matplotlib `PuOr_r`), centred at 0: orange =
  toward refusal, purple = toward compliance. Colour-blind safe (no red/green) and readable in grey.
- Unsigned scores (saliency: a sensitivity, >= 0): the sequential `Greys` map from 0 (white) to vmax,
  so no direction is suggested where there is none.
- Categories (lines, bars): Okabe & Ito's colour-blind-safe set, without its green and yellow, so no
  red/green pair can occur; behaviour labels reuse the diverging map's ends (refusal orange,
  compliance purple) so a paper's figures agree with each other.

One scale per method per figure: vmax is the 99th percentile of |score| over all the words of that
method in the figure (numpy's "higher" percentile, so it is the largest |score| for up to 100 words);
scores beyond it saturate, and the colour bar says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402

from lexprobe.toolkit.viz.names import display_name  # noqa: E402

DIVERGING_NAME, SEQUENTIAL_NAME = "PuOr_r", "Greys"
DIVERGING = plt.get_cmap(DIVERGING_NAME)
SEQUENTIAL = plt.get_cmap(SEQUENTIAL_NAME)
PERCENTILE = 99
TOWARD_REFUSAL, TOWARD_COMPLIANCE, UNSIGNED = "toward refusal", "toward compliance", "sensitivity (unsigned)"

OKABE_ITO = {
    "orange": "#E69F00",
    "sky blue": "#56B4E9",
    "bluish green": "#009E73",
    "yellow": "#F0E442",
    "blue": "#0072B2",
    "vermillion": "#D55E00",
    "reddish purple": "#CC79A7",
    "black": "#000000",
}
CATEGORICAL = [OKABE_ITO[k] for k in ("blue", "orange", "sky blue", "vermillion", "reddish purple", "black")]
ACCENT = OKABE_ITO["vermillion"]  # pooled effects, thresholds: set apart from the blue main series
MAIN = OKABE_ITO["blue"]
NEUTRAL = "#999999"  # a random baseline
REFUSAL = mcolors.to_hex(DIVERGING(0.9))  # dark orange
COMPLIANCE = mcolors.to_hex(DIVERGING(0.1))  # dark purple
BEHAVIOUR = {  # XSTest's three labels: compliance purple, refusal dark orange, partial refusal light orange
    "full_compliance": mcolors.to_hex(DIVERGING(0.2)),
    "full_refusal": mcolors.to_hex(DIVERGING(0.88)),
    "partial_refusal": mcolors.to_hex(DIVERGING(0.68)),
}
KNOWN_UNSIGNED = ("saliency",)  # used when the methods table does not record `signed`


# ------------------------------------------------------------------------------------------ scales
@dataclass(frozen=True)
class Scale:
    """The colour scale of one method in one figure."""

    method: str
    signed: bool
    vmax: float
    n: int = 0  # words it was computed over
    clipped: int = 0  # words beyond vmax (drawn at the end colour)

    @property
    def cmap(self):
        return DIVERGING if self.signed else SEQUENTIAL

    @property
    def vmin(self) -> float:
        return -self.vmax if self.signed else 0.0

    def position(self, score: float) -> float:
        """Where a score falls on the colour map, in [0, 1]."""
        if self.vmax <= 0 or not np.isfinite(score):
            return 0.5 if self.signed else 0.0
        if self.signed:
            return 0.5 + 0.5 * float(np.clip(score / self.vmax, -1, 1))
        return float(np.clip(score / self.vmax, 0, 1))

    def colour(self, score: float) -> tuple[str, str]:
        """(background, text) hex colours of a score."""
        rgba = self.cmap(self.position(score))
        return mcolors.to_hex(rgba), text_colour(rgba)

    def ticks(self) -> list[float]:
        return [-self.vmax, 0.0, self.vmax] if self.signed else [0.0, self.vmax / 2, self.vmax]

    def ends(self) -> tuple[str, str]:
        """(left, right) end labels of the colour bar."""
        return (TOWARD_COMPLIANCE, TOWARD_REFUSAL) if self.signed else ("0: insensitive", UNSIGNED)

    @property
    def rule(self) -> str:
        """How vmax was chosen, in words: the 99th percentile is the largest |score| up to 100 words."""
        return "the largest |score|" if self.n <= 100 else f"the {PERCENTILE}th percentile of |score|"

    def label(self) -> str:
        """The colour bar's caption: method, what the ends mean and how vmax was chosen."""
        what = "word score" if self.signed else "word sensitivity |gradient| (unsigned)"
        span = f"±{self.vmax:.3g}" if self.signed else f"0 to {self.vmax:.3g}"
        beyond = f"; {self.clipped} beyond it saturate" if self.clipped else ""
        return (
            f"{display_name(self.method)}: {what}, scale {span} = {self.rule} over the {self.n} words in "
            f"this figure{beyond}"
        )


def text_colour(rgba) -> str:
    """Near-black on light backgrounds, white on dark ones (WCAG relative luminance)."""
    r, g, b = (c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in mcolors.to_rgb(rgba))
    return "#111111" if 0.2126 * r + 0.7152 * g + 0.0722 * b > 0.22 else "#ffffff"


def is_signed(result, method: str) -> bool:
    """False where the run recorded the method unsigned (`signed` False in its methods table) or, when
    it recorded nothing, where the method is a known unsigned one (saliency)."""
    methods = getattr(result, "methods", None)
    if methods is not None and len(methods) and {"method", "signed"} <= set(methods.columns):
        recorded = {_flag(v) for v in methods.loc[methods["method"] == method, "signed"]} - {None}
        if recorded:
            return all(recorded)
    return method not in KNOWN_UNSIGNED


def _flag(value) -> bool | None:
    """A `signed` cell as read back from CSV (bool, "True"/"False", 0/1) or None when empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, (bool, np.bool_, int, np.integer, float)):
        return bool(value)
    text = str(value).strip().lower()
    return {"true": True, "1": True, "1.0": True, "false": False, "0": False, "0.0": False}.get(text)


def robust_vmax(scores) -> float:
    """The 99th percentile of |score| ("higher": an observed value, the max for up to 100 scores)."""
    values = np.abs(np.asarray(scores, dtype=float))
    values = values[np.isfinite(values)]
    if not len(values):
        return 0.0
    return float(np.percentile(values, PERCENTILE, method="higher"))


def scale_for(result, method: str, ids=None) -> Scale:
    """The scale of `method` over the prompts `ids` (default: every prompt of the result)."""
    a = result.attributions
    rows = a[a["method"] == method]
    if ids is not None:
        rows = rows[rows["id"].isin(list(ids))]
    scores = rows["score"].to_numpy(dtype=float)
    signed = is_signed(result, method)
    vmax = robust_vmax(scores)
    clipped = int((np.abs(scores) > vmax).sum()) if vmax > 0 else 0
    return Scale(method, signed, vmax, len(scores), clipped)


def scales_for(result, methods=None, ids=None) -> dict[str, Scale]:
    return {m: scale_for(result, m, ids) for m in (methods or result.method_names)}


# ------------------------------------------------------------------------------------------ colour bars
def colourbar(fig, cax, scale: Scale, fontsize: float = 8):
    """A matplotlib colour bar of `scale` in the axes `cax` (horizontal), with the end labels."""
    from matplotlib.cm import ScalarMappable

    vmax = scale.vmax if scale.vmax > 0 else 1.0
    norm = mcolors.Normalize(-vmax if scale.signed else 0.0, vmax)
    extend = ("both" if scale.signed else "max") if scale.clipped else "neither"
    bar = fig.colorbar(ScalarMappable(norm, scale.cmap), cax=cax, orientation="horizontal", extend=extend)
    bar.set_ticks(_ticks(scale, vmax), labels=[tick_label(t, scale.signed) for t in _ticks(scale, vmax)])
    bar.ax.tick_params(labelsize=fontsize)
    bar.set_label(scale.label(), fontsize=fontsize)
    left, right = scale.ends()
    cax.text(0, 1.25, f"← {left}", transform=cax.transAxes, ha="left", va="bottom", fontsize=fontsize)
    cax.text(1, 1.25, f"{right} →", transform=cax.transAxes, ha="right", va="bottom", fontsize=fontsize)
    return bar


def _ticks(scale: Scale, vmax: float) -> list[float]:
    return [-vmax, 0.0, vmax] if scale.signed else [0.0, vmax / 2, vmax]


def tick_label(value: float, signed: bool) -> str:
    """A colour-bar tick: "0", "+0.52", "-0.52" (signed) or "0.52" (unsigned)."""
    return "0" if value == 0 else (f"{value:+.3g}" if signed else f"{value:.3g}")


def gradient_css(scale: Scale, stops: int = 11) -> str:
    """A CSS linear-gradient of the scale's colour map, left (vmin) to right (vmax)."""
    parts = [f"{mcolors.to_hex(scale.cmap(x))} {100 * x:.0f}%" for x in np.linspace(0, 1, stops)]
    return f"linear-gradient(to right,{','.join(parts)})"


# ------------------------------------------------------------------------------------------ files
def save(fig, path, dpi: int = 130, **kwargs) -> Path:
    """Write `fig` in the format its suffix names (png, svg, pdf): SVG text stays text, PDF fonts are
    embedded as TrueType (editable); the figure is closed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context({"svg.fonttype": "none", "pdf.fonttype": 42, "ps.fonttype": 42}):
        fig.savefig(path, dpi=dpi, **kwargs)
    plt.close(fig)
    return path
