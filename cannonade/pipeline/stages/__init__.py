"""One module per pipeline stage. Each has ``NAME`` and ``execute(run) -> dict`` (the stage's counts)."""
