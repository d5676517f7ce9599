"""What every door checks of a request before any model loads: the phrases and the image suffixes.

Kept free of torch (and of everything that imports it), so ``weakground locate`` can refuse a bad phrase or a
missing file in a fraction of a second instead of after importing torch.
"""

from __future__ import annotations

import re
from typing import Sequence

from weakground.errors import InputError

MAX_PHRASE_CHARS = 1000  # a longer "phrase" is almost surely a pasted document; refuse it rather than guess
# Words that name nothing in an image: articles, pronouns, prepositions, conjunctions, auxiliaries. A phrase made
# only of these ("the", "of it", "and then") has nothing to ground; every method would still return a confident
# peak for it, so every door refuses it instead. Numerals are content ("3" is a multi-MNIST class).
FUNCTION_WORDS = frozenset("""
a an the this that these those some any each every all both either neither no not
i me my mine you your yours he him his she her hers it its we us our ours they them their theirs
myself yourself himself herself itself ourselves themselves who whom whose which what where when why how
here there then than so too very just also only
in on at of to for from by with without into onto over under above below between among through across along
around about against behind beside besides near off out up down inside outside upon within via per
and or but nor yet if because while although though as
is am are was were be been being has have had having do does did doing will would shall should can could
may might must
""".split())
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def check_phrases(phrases: Sequence[str], max_phrases: int | None = None) -> list[str]:
    """Phrases with their whitespace normalised; one-line :class:`InputError` for an empty one, one over
    :data:`MAX_PHRASE_CHARS`, control characters, one with no content word (:func:`has_content_word`), none at
    all or more than ``max_phrases``."""
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
        if not has_content_word(phrase):
            raise InputError(f"phrase {i} ({phrase.strip()[:40]!r}) has no word that names something to ground")
    return [" ".join(p.split()) for p in phrases]


def has_content_word(phrase: str) -> bool:
    """True when ``phrase`` has a word (letters or digits, any script) that is not in :data:`FUNCTION_WORDS`."""
    return any(word.lower() not in FUNCTION_WORDS for word in _WORD.findall(phrase))
