"""One module per paper experiment; each exposes run(config) -> run folder (or None)."""
