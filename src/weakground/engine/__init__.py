"""Training loop, checkpoints and evaluation runners shared by every method."""
