"""Multimodal fusion modules."""

from weakground.fusion.mcb import CompactBilinearPooling, CountSketch  # noqa: F401

__all__ = ["CompactBilinearPooling", "CountSketch"]
