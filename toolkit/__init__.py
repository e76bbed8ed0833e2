"""lexprobe's engine: models, chat formatting, suites, scoring, generation and results."""
