"""One module per paper experiment; each exposes run(flags) -> run folder (or None)."""
