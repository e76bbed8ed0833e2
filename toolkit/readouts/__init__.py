"""A model's refusal readout, calibrated on its own responses to calibration prompts (never XSTest),
cached per model, dtype and condition, or taken from those shipped with lexprobe: machinery every study
needs when it opens a session, below the studies (`calibrate.get_readout`)."""
