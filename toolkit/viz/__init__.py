"""Pictures: word heatmaps, plots, effect figures and the self-contained HTML report writer."""
