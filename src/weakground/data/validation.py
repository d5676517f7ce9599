"""Checks shared by the dataset specs (multi-MNIST, scenes): one message style for every bad field."""

from __future__ import annotations

import math

import numpy as np

from weakground.errors import WeakgroundError


def is_int(value: object) -> bool:
    """An integer (numpy included), but not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A finite int or float."""
    return is_int(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))


def field_error(spec: object, name: str, expected: str) -> WeakgroundError:
    """``SpecName.field must be <expected>, got <value>``."""
    return WeakgroundError(f"{type(spec).__name__}.{name} must be {expected}, got {getattr(spec, name)!r}")
