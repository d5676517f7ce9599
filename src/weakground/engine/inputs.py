"""What every door checks of a request before any model loads: the phrases and the image suffixes.

Kept free of torch (and of everything that imports it), so ``weakground locate`` can refuse a bad phrase or a
missing file in a fraction of a second instead of after importing torch.
"""

from __future__ import annotations

from typing import Sequence

from weakground.errors import InputError

MAX_PHRASE_CHARS = 1000  # a longer "phrase" is almost surely a pasted document; refuse it rather than guess
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def check_phrases(phrases: Sequence[str], max_phrases: int | None = None) -> list[str]:
    """Phrases with their whitespace normalised; one-line :class:`InputError` for an empty one, one over
    :data:`MAX_PHRASE_CHARS`, control characters, none at all or more than ``max_phrases``."""
    phrases = list(phrases)
    if not phrases:
        raise InputError("no phrase to ground: give one or more phrases")
    if max_phrases is not None and len(phrases) > max_phrases:
        raise InputError(f"{len(phrases)} phrases; the limit is {max_phrases} per request")
    for i, phrase in enumerate(phrases, 1):
        if not isinstance(phrase, str) or not phrase.strip():
            raise InputError(f"phrase {i} is empty")
        if len(phrase) > MAX_PHRASE_CHARS:
            raise InputError(f"phrase {i} is {len(phrase):,} characters long; the limit is {MAX_PHRASE_CHARS:,}")
        if any(ord(c) < 32 and c not in "\t\n\r" for c in phrase):
            raise InputError(f"phrase {i} contains control characters")
        if any("\ud800" <= c <= "\udfff" for c in phrase):
            # Python turns bytes that are not UTF-8 (a latin-1 shell, a binary file) into lone surrogates;
            # grounding that text would silently look for a different phrase than the one typed.
            raise InputError(f"phrase {i} is not valid UTF-8 text")
    return [" ".join(p.split()) for p in phrases]
