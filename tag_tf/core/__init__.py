"""Core: MultiTaskModel, the recording step and its state, lookahead steps, configuration."""
