"""lexprobe's engine: models, chat formatting, suites, scoring, generation and results."""

__version__ = "0.1.0"
