"""Files: bundled and user suites, result tables with provenance, the cache, terminal output."""
