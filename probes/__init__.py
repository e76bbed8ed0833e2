"""Hook-based probes: what lexprobe reads out of a forward pass."""
