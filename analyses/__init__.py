"""Studies users run: each module has a config dataclass and `run(config) -> Result`."""
