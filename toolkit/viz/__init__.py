"""Pictures: word heatmaps, plots, effect figures and the self-contained HTML report writer.

Every figure is drawn off-screen (Agg) and every label is drawn literally: a word, type or model name
holding `$` or `\\foo` is text, never mathtext to parse (`text.parse_math` off)."""

import matplotlib

matplotlib.use("Agg")
matplotlib.rcParams["text.parse_math"] = False
