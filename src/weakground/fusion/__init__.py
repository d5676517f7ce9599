"""Multimodal fusion modules."""

from weakground.fusion.mcb import CompactBilinearPooling, CountSketch  # noqa: F401
