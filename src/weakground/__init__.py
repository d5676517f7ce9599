"""weakground: weakly supervised visual grounding.

Learn, from images paired only with text (labels, captions) and no boxes, where a phrase is in an image;
turn a phrase into a heatmap, a point and boxes. ``weakground.load(...)`` is the Python API (see
:mod:`weakground.api`); it is imported on first use, so ``import weakground`` and ``weakground --help`` stay
instant (no torch).
"""

from typing import Any

from weakground.version import __version__

_API = ("load", "load_captioner", "Grounding", "GroundedCaption", "Predictor", "CaptionPredictor", "ground_maps")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from weakground import api

        return getattr(api, name)
    raise AttributeError(f"module 'weakground' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
