"""Models: loading specs, the architecture table, chat formats, the tiny test model, text encoders."""
