"""Analyses of what happens inside a model: LogitLens and activation patching."""
