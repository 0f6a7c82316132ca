"""The procedural image world: the embedded default data set."""
