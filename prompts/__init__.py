"""Data shipped with lexprobe (suites, calibration samples, lexicons, presets), each with its licence."""

from importlib.resources import files


def path(name: str):
    """Path-like handle to a bundled data file."""
    return files(__name__) / name
