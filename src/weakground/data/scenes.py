"""Synthetic captioned scenes: coloured, textured shapes (and real handwritten digits) on cluttered backgrounds,
with grammar-generated captions whose entity phrases are linked to their boxes.

Every image holds 1..N objects, each with four attributes: a **category** (``circle``, ``square``, ``triangle``,
``star``, ``ring``, ``cross``, or a real MNIST digit sprite such as ``seven``), a **colour**, a **texture**
(``solid``, ``striped``, ``dotted``; digits are always solid) and a **size** class (``small``/``large``, far
enough apart that "bigger than" is visibly true). Captions come from a small grammar::

    "a red circle to the left of a small blue square"
    "two green stars above a striped triangle ."
    "the yellow ring is next to the big purple cross"
    "a large square bigger than the circle"

Ground truth is exact by construction:

* A phrase describes a set of objects by its category plus a subset of the other attributes, and its boxes are
  **every** object in the image that the description matches. A singular phrase ("the red circle") is only used
  when it matches exactly one object, so when a blue circle is also present the colour has to be said, and the
  model has to tell the two apart. A plural phrase ("two red circles") matches 2..6 objects, its number word is
  the count, and it carries one box per object.
* Relations are only stated when they hold for every pair of objects of the two phrases (``left of``: every box of
  the first ends before any box of the second starts; ``bigger than``: size classes differ and every box side of
  the first exceeds every one of the second by 20%).
* Boxes are the tight integer box of each object's drawn pixels (0-based pixel edges, ``x2``/``y2`` exclusive),
  so they round-trip exactly through the 1-based Flickr30K Entities format.

**Unseen compositions.** A fixed share of the colour-category pairs (chosen by ``split_seed``, spread so every
colour and every category stays seen in training) never appears in ``train``/``val``/``test``; the
``test_unseen`` split is made of those pairs only, so every colour+category phrase in it is a composition no
training caption contains, while each word on its own is familiar.

**Difficulty.** Objects are small (about 9-26% of the shorter image side) and placed uniformly without overlap,
so pointing at the image centre hits a phrase's box for well under 35% of the phrases and a uniformly random
point for well under 20% (:func:`baseline_rates` computes both). Backgrounds carry low-contrast noise, stripes
and blobs, so a heatmap cannot just find "anything that is not flat".

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so a split's images do not depend
on the sizes of the other splits and any prefix of a split is stable when the split grows.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
from PIL import Image, ImageDraw

from weakground.data.coco import write_coco_captions
from weakground.data.flickr30k_entities import write_flickr30k_entities
from weakground.data.types import Box, Caption, ImageRecord, Phrase
from weakground.data.validation import field_error, is_int, is_number
from weakground.errors import WeakgroundError

__all__ = [
    "SPLITS",
    "SHAPES",
    "DIGIT_NAMES",
    "COLOURS",
    "TEXTURES",
    "SIZES",
    "NUMBER_WORDS",
    "SceneSpec",
    "SceneObject",
    "Scene",
    "heldout_pairs",
    "make_scene",
    "iter_scenes",
    "generate_scenes",
    "write_scenes",
    "baseline_rates",
    "noun_forms",
]

SPLITS = ("train", "val", "test", "test_unseen")
SHAPES = ("circle", "square", "triangle", "star", "ring", "cross")
# Digit categories are named by the word, so the category doubles as a clean Flickr30K phrase type ("seven").
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# Saturated, mutually distinct RGB so a colour word is never ambiguous after the per-object jitter.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (240, 225, 40),
    "purple": (150, 60, 205),
    "orange": (250, 135, 20),
    "white": (245, 245, 245),
    "pink": (250, 130, 200),
    "cyan": (40, 215, 225),
}
TEXTURES = ("solid", "striped", "dotted")
SIZES = ("small", "large")
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}

# Surface forms, several per attribute so that captions vary; the words alone determine the attribute.
_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big")}
# Texture as an adjective before the noun, or as a "with ..." suffix after it.
_TEXTURE_ADJ = {"solid": ("plain", "solid"), "striped": ("striped",), "dotted": ("dotted", "spotted")}
_TEXTURE_SUFFIX = {"solid": (), "striped": (("with", "stripes"),), "dotted": (("with", "dots"),)}
_SHAPE_NOUNS: dict[str, tuple[tuple[str, str], ...]] = {  # (singular, plural)
    "circle": (("circle", "circles"), ("disk", "disks")),
    "square": (("square", "squares"), ("block", "blocks")),
    "triangle": (("triangle", "triangles"),),
    "star": (("star", "stars"),),
    "ring": (("ring", "rings"), ("donut", "donuts")),
    "cross": (("cross", "crosses"), ("plus sign", "plus signs")),
}
_DIGIT_PLURALS = ("zeros", "ones", "twos", "threes", "fours", "fives", "sixes", "sevens", "eights", "nines")
_RELATIONS: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
    "near": ("next to", "beside", "near"),
    "bigger": ("bigger than", "larger than"),
    "smaller": ("smaller than",),
}
_SINGLE_TEMPLATES = ("{A}", "there {be} {A}", "{A} on a cluttered background", "a picture of {A}",
                     "{A} in the picture")
_RELATION_TEMPLATES = ("{A} {rel} {B}", "{A} {be} {rel} {B}", "there {be} {A} {rel} {B}")
_PAIR_TEMPLATES = ("{A} and {B}", "a picture of {A} and {B}", "there {be} {A} and {B}")

# Stroke and ink thresholds: pixels drawn with less coverage than this are left out of the object (and its box).
_MIN_ALPHA = 0.05
_SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered down, for anti-aliased edges
_PLACEMENT_TRIES = 100
_GAP = 2  # px kept free between the patches of two objects, so boxes never touch
# Digit ink fills about 20 of its 28 px patch: scale the patch up so a digit's box matches a shape's of its size.
_DIGIT_PATCH_SCALE = 1.3
# "bigger than" also needs every box side of the bigger phrase to exceed the smaller one's by this factor.
_BIGGER_RATIO = 1.2


def noun_forms(category: str) -> tuple[tuple[str, str], ...]:
    """The ``(singular, plural)`` nouns a caption may use for a category.

    Args:
        category: a shape in :data:`SHAPES` or a digit word in :data:`DIGIT_NAMES`.

    Returns:
        e.g. ``(("circle", "circles"), ("disk", "disks"))``; digits: ``(("seven", "sevens"),
        ("digit seven", "sevens"), ("number seven", "sevens"))``.
    """
    if category in _SHAPE_NOUNS:
        return _SHAPE_NOUNS[category]
    plural = _DIGIT_PLURALS[DIGIT_NAMES.index(category)]
    return ((category, plural), (f"digit {category}", plural), (f"number {category}", plural))


# ------------------------------------------------------------------------------------------------ spec


@dataclass
class SceneSpec:
    """How synthetic captioned scenes are drawn and described.

    Attributes:
        min_size: smallest image side in pixels (>= 32).
        max_size: largest image side in pixels.
        square: ``True`` for square images; otherwise width and height are drawn independently.
        min_objects: fewest objects attempted per image (>= 1).
        max_objects: most objects per image. An object that finds no free spot in ``_PLACEMENT_TRIES`` tries is
            dropped, so an image may hold fewer than ``min_objects``, but always at least one.
        categories: object categories: shapes from :data:`SHAPES` and digit words from :data:`DIGIT_NAMES`
            (real MNIST handwriting from :func:`weakground.data.digits.load_digits_5k`).
        colours: colour names, keys of :data:`COLOURS`.
        textures: textures from :data:`TEXTURES` (digits are always drawn solid).
        small_scale: ``(lo, hi)`` side of a small object as a fraction of the shorter image side.
        large_scale: ``(lo, hi)`` for a large object; ``lo`` must exceed ``small_scale``'s ``hi``.
        background_contrast: amplitude, on [0, 1] intensities, of the background clutter (noise, stripes, blobs).
        noise_std: std of the per-pixel Gaussian noise added last, on [0, 1] intensities.
        captions_per_image: captions written for each image (distinct when the scene allows it).
        p_group: chance, per object slot, of starting a group of 2-3 identical objects (plural phrases).
        p_distractor: chance, per slot, of adding a copy of an earlier object that differs in one attribute
            (so a phrase must name that attribute to single one of them out).
        unseen_fraction: share of the colour-category pairs held out for ``test_unseen`` (0 disables it).
        split_seed: seed of the dataset-level choices that must not move with ``seed``: the held-out pairs and
            the train/test split of the digit handwriting.
        seed: seed of the images and captions.
    """

    min_size: int = 128
    max_size: int = 224
    square: bool = False
    min_objects: int = 1
    max_objects: int = 6
    categories: tuple[str, ...] = SHAPES + ("seven", "nine")
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange", "white")
    textures: tuple[str, ...] = TEXTURES
    small_scale: tuple[float, float] = (0.09, 0.14)
    large_scale: tuple[float, float] = (0.18, 0.26)
    background_contrast: float = 0.12
    noise_std: float = 0.02
    captions_per_image: int = 5
    p_group: float = 0.15
    p_distractor: float = 0.25
    unseen_fraction: float = 0.2
    split_seed: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        # Lists from YAML/JSON configs become tuples, so specs compare and serialise the same way.
        for name in ("categories", "colours", "textures", "small_scale", "large_scale"):
            setattr(self, name, tuple(getattr(self, name)))
        self.validate()

    def validate(self) -> None:
        """Check every field.

        Raises:
            WeakgroundError: naming the first invalid field, its value and what is allowed.
        """

        def fail(name: str, expected: str) -> None:
            raise field_error(self, name, expected)

        for name, low in (("min_size", 32), ("max_size", 32), ("min_objects", 1), ("max_objects", 1),
                          ("captions_per_image", 1), ("split_seed", 0), ("seed", 0)):
            if not is_int(getattr(self, name)) or getattr(self, name) < low:
                fail(name, f"an integer >= {low}")
        if self.max_size < self.min_size:
            fail("max_size", f">= min_size ({self.min_size})")
        if self.max_objects < self.min_objects:
            fail("max_objects", f">= min_objects ({self.min_objects})")
        known = SHAPES + DIGIT_NAMES
        if not self.categories or any(c not in known for c in self.categories) \
                or len(set(self.categories)) != len(self.categories):
            fail("categories", f"distinct names from {', '.join(known)}")
        if not self.colours or any(c not in COLOURS for c in self.colours) \
                or len(set(self.colours)) != len(self.colours):
            fail("colours", f"distinct names from {', '.join(COLOURS)}")
        if not self.textures or any(t not in TEXTURES for t in self.textures) \
                or len(set(self.textures)) != len(self.textures):
            fail("textures", f"distinct names from {', '.join(TEXTURES)}")
        for name in ("small_scale", "large_scale"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not all(is_number(v) for v in lo_hi) or not 0.0 < lo_hi[0] <= lo_hi[1] <= 0.5:
                fail(name, "(lo, hi) with 0 < lo <= hi <= 0.5")
        if self.large_scale[0] <= self.small_scale[1]:
            fail("large_scale", f"above small_scale (lo > {self.small_scale[1]}) so that size words hold")
        if self.min_size * self.small_scale[0] < 6:
            fail("small_scale", f"at least 6 px on a {self.min_size} px side (lo >= {6 / self.min_size:.3f})")
        for name in ("background_contrast", "noise_std"):
            if not is_number(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 0.5:
                fail(name, "a number in [0, 0.5]")
        for name in ("p_group", "p_distractor"):
            if not is_number(getattr(self, name)) or not 0.0 <= getattr(self, name) <= 1.0:
                fail(name, "a probability in [0, 1]")
        if self.p_group + self.p_distractor > 1.0:
            fail("p_distractor", f"<= 1 - p_group ({1.0 - self.p_group:g})")
        if not is_number(self.unseen_fraction) or not 0.0 <= self.unseen_fraction < 1.0:
            fail("unseen_fraction", "a number in [0, 1)")
        n_pairs = len(self.colours) * len(self.categories)
        n_held = round(self.unseen_fraction * n_pairs)
        # Each held-out pair needs its colour and its category to remain seen elsewhere.
        if n_held and (len(self.colours) < 2 or len(self.categories) < 2):
            fail("unseen_fraction", "0 unless there are at least 2 colours and 2 categories")
        if n_held > (len(self.colours) - 1) * (len(self.categories) - 1):
            fail("unseen_fraction", "small enough that every colour and category keeps a seen pair")


# ---------------------------------------------------------------------------------------------- records


@dataclass(frozen=True)
class SceneObject:
    """One drawn object and its ground truth.

    Attributes:
        category: a shape or digit word.
        colour: a key of :data:`COLOURS`.
        texture: ``"solid"``, ``"striped"`` or ``"dotted"``.
        size: ``"small"`` or ``"large"``.
        box: tight box of the drawn pixels; integer-valued floats, 0-based edges, ``x2``/``y2`` exclusive.
    """

    category: str
    colour: str
    texture: str
    size: str
    box: Box

    @property
    def pair(self) -> tuple[str, str]:
        """``(colour, category)``, the composition that the unseen split holds out."""
        return self.colour, self.category


class Scene(NamedTuple):
    """One generated image with its record and the objects in it.

    Attributes:
        record: the image's :class:`ImageRecord` (``path`` is ``None`` until written); COCO-style ``objects``
            hold one phrase per category present (``entity_id`` the 1-based category index in the spec).
        image: RGB PIL image of ``record.width`` x ``record.height``.
        objects: the drawn objects, in drawing order.
    """

    record: ImageRecord
    image: Image.Image
    objects: list[SceneObject]


@dataclass(frozen=True)
class _Attrs:
    category: str
    colour: str
    texture: str
    size: str


@dataclass(frozen=True)
class _Desc:
    """A description: the category and any subset of the other attributes (``None`` = not said)."""

    category: str
    colour: str | None
    texture: str | None
    size: str | None

    def matches(self, obj: SceneObject) -> bool:
        return (obj.category == self.category and self.colour in (None, obj.colour)
                and self.texture in (None, obj.texture) and self.size in (None, obj.size))


# ---------------------------------------------------------------------------------------- held-out pairs


def heldout_pairs(spec: SceneSpec) -> list[tuple[str, str]]:
    """The ``(colour, category)`` pairs reserved for ``test_unseen``.

    ``round(unseen_fraction * n_colours * n_categories)`` pairs, chosen by ``spec.split_seed`` and spread evenly:
    no colour and no category loses more than its share, so every colour and every category is still seen in
    training, only in other combinations.

    Args:
        spec: the scene spec.

    Returns:
        Sorted ``(colour, category)`` pairs; empty when ``unseen_fraction`` rounds to none.
    """
    colours, categories = spec.colours, spec.categories
    n_held = round(spec.unseen_fraction * len(colours) * len(categories))
    if n_held == 0:
        return []
    rng = np.random.default_rng([spec.split_seed, 7919])
    pairs = [(c, k) for c in colours for k in categories]
    order = rng.permutation(len(pairs))
    # Caps start at the even share and are relaxed only if the greedy pass cannot reach n_held; they stay below
    # the row/column length (validate() guarantees that is enough), so each colour and category keeps a seen pair.
    for slack in range(max(len(colours), len(categories))):
        cap_colour = min(math.ceil(n_held / len(colours)) + slack, len(categories) - 1)
        cap_category = min(math.ceil(n_held / len(categories)) + slack, len(colours) - 1)
        per_colour: dict[str, int] = {}
        per_category: dict[str, int] = {}
        chosen: list[tuple[str, str]] = []
        for i in order:
            colour, category = pairs[int(i)]
            if per_colour.get(colour, 0) < cap_colour and per_category.get(category, 0) < cap_category:
                chosen.append((colour, category))
                per_colour[colour] = per_colour.get(colour, 0) + 1
                per_category[category] = per_category.get(category, 0) + 1
                if len(chosen) == n_held:
                    return sorted(chosen)
    raise WeakgroundError(f"cannot hold out {n_held} colour-category pairs and keep every colour and category "
                          "seen; lower SceneSpec.unseen_fraction")


def _allowed_pairs(spec: SceneSpec, split: str) -> list[tuple[str, str]]:
    held = set(heldout_pairs(spec))
    if split == "test_unseen":
        if not held:
            raise WeakgroundError("the test_unseen split needs held-out pairs: SceneSpec.unseen_fraction is 0")
        return sorted(held)
    return [(c, k) for c in spec.colours for k in spec.categories if (c, k) not in held]


# ------------------------------------------------------------------------------------------------ layout


def _textures_for(spec: SceneSpec, category: str) -> tuple[str, ...]:
    # Digit strokes are 2-3 px wide: stripes or dots on them would not be visible, so digits are always solid.
    if category in DIGIT_NAMES:
        return ("solid",)
    return spec.textures


def _random_attrs(rng: np.random.Generator, spec: SceneSpec, pairs: Sequence[tuple[str, str]]) -> _Attrs:
    colour, category = pairs[int(rng.integers(len(pairs)))]
    textures = _textures_for(spec, category)
    return _Attrs(category, colour, textures[int(rng.integers(len(textures)))], SIZES[int(rng.integers(2))])


def _distractor(rng: np.random.Generator, spec: SceneSpec, base: _Attrs,
                pairs: Sequence[tuple[str, str]]) -> _Attrs:
    """Same category as ``base``, one other attribute changed (to a value the split allows)."""
    options: list[_Attrs] = []
    colours = [c for c, k in pairs if k == base.category and c != base.colour]
    if colours:
        options.append(_Attrs(base.category, colours[int(rng.integers(len(colours)))], base.texture, base.size))
    textures = [t for t in _textures_for(spec, base.category) if t != base.texture]
    if textures:
        options.append(_Attrs(base.category, base.colour, textures[int(rng.integers(len(textures)))], base.size))
    options.append(_Attrs(base.category, base.colour, base.texture, "large" if base.size == "small" else "small"))
    return options[int(rng.integers(len(options)))]


def _sample_attrs(rng: np.random.Generator, spec: SceneSpec, pairs: Sequence[tuple[str, str]]) -> list[_Attrs]:
    n = int(rng.integers(spec.min_objects, spec.max_objects + 1))
    out: list[_Attrs] = []
    # Objects that may still get a distractor: each fresh object or group at most one, and never a distractor
    # of a distractor, so scenes do not collapse into many variants of a single category.
    bases: list[_Attrs] = []
    while len(out) < n:
        r = rng.random()
        if r < spec.p_group and n - len(out) >= 2:
            k = int(rng.integers(2, min(3, n - len(out)) + 1))
            attrs = _random_attrs(rng, spec, pairs)
            out.extend([attrs] * k)
            bases.append(attrs)
        elif bases and r < spec.p_group + spec.p_distractor:
            out.append(_distractor(rng, spec, bases.pop(int(rng.integers(len(bases)))), pairs))
        else:
            attrs = _random_attrs(rng, spec, pairs)
            out.append(attrs)
            bases.append(attrs)
    return out


def _place(rng: np.random.Generator, sides: Sequence[int], width: int,
           height: int) -> list[tuple[int, int] | None]:
    """Top-left corner of each square patch, uniform over the image and disjoint from earlier patches."""
    taken: list[tuple[int, int, int, int]] = []
    out: list[tuple[int, int] | None] = []
    for s in sides:
        spot = None
        for _ in range(_PLACEMENT_TRIES):
            x, y = int(rng.integers(0, width - s + 1)), int(rng.integers(0, height - s + 1))
            if all(x + s + _GAP <= a1 or a2 + _GAP <= x or y + s + _GAP <= b1 or b2 + _GAP <= y
                   for a1, b1, a2, b2 in taken):
                spot = (x, y)
                taken.append((x, y, x + s, y + s))
                break
        out.append(spot)
    return out


# ---------------------------------------------------------------------------------------------- drawing


def _shape_alpha(category: str, s: int, rng: np.random.Generator) -> np.ndarray:
    """Coverage ``(s, s)`` float32 in [0, 1] of one shape drawn in an ``s`` x ``s`` patch."""
    big = s * _SUPERSAMPLE
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    last = big - 1
    if category == "circle":
        draw.ellipse((0, 0, last, last), fill=255)
    elif category == "square":
        draw.rectangle((0, 0, last, last), fill=255)
    elif category == "triangle":
        draw.polygon([(big / 2, 0), (0, last), (last, last)], fill=255)
    elif category == "ring":
        draw.ellipse((0, 0, last, last), fill=255)
        inset = big * 0.24  # ring width ~ a quarter of the diameter: thick enough to show a texture
        draw.ellipse((inset, inset, last - inset, last - inset), fill=0)
    elif category == "cross":
        arm = big * 0.34
        lo, hi = (big - arm) / 2, (big + arm) / 2
        draw.rectangle((lo, 0, hi, last), fill=255)
        draw.rectangle((0, lo, last, hi), fill=255)
    elif category == "star":
        turn = float(rng.uniform(0, 2 * math.pi / 5))
        points = []
        for i in range(10):
            r = big / 2 if i % 2 == 0 else big * 0.2
            a = turn + i * math.pi / 5
            points.append((big / 2 + r * math.sin(a), big / 2 - r * math.cos(a)))
        draw.polygon(points, fill=255)
    else:  # pragma: no cover - validate() only admits known categories
        raise ValueError(f"unknown shape {category!r}")
    alpha = np.asarray(canvas.resize((s, s), Image.Resampling.BOX), dtype=np.float32) / 255.0
    return alpha


def _digit_alpha(sprite: np.ndarray, s: int) -> np.ndarray:
    """Coverage ``(s, s)`` of a 28x28 uint8 MNIST digit resized to the patch."""
    img = Image.fromarray(np.ascontiguousarray(sprite)).resize((s, s), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(img, dtype=np.float32) / 255.0 * 1.3, 0.0, 1.0)


def _texture_fill(texture: str, rgb: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """``(s, s, 3)`` float32 colours of an ``s`` x ``s`` patch: the object colour, with dark stripes or dots."""
    fill = np.broadcast_to(rgb, (s, s, 3)).astype(np.float32)
    if texture == "solid":
        return fill
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    if texture == "striped":
        period = max(3.0, s / float(rng.uniform(3.0, 4.5)))
        angle = float(rng.uniform(0, math.pi))
        phase = (xx * math.cos(angle) + yy * math.sin(angle)) / period + float(rng.random())
        dark = (phase % 1.0) < 0.45
    else:
        spacing = max(4.0, s / float(rng.uniform(3.0, 4.5)))
        ox, oy = rng.uniform(0, spacing, size=2)
        dx = (xx + ox) % spacing - spacing / 2
        dy = (yy + oy) % spacing - spacing / 2
        dark = dx * dx + dy * dy <= (0.3 * spacing) ** 2
    # Darkening instead of a second colour keeps the object's colour word true for the whole object.
    return np.where(dark[..., None], fill * 0.3, fill)


def _background(rng: np.random.Generator, spec: SceneSpec, width: int, height: int) -> np.ndarray:
    """``(H, W, 3)`` float32 in [0, 1]: a dull base colour under low-contrast noise, stripes and blobs."""
    hue, sat, val = float(rng.random()), float(rng.uniform(0.05, 0.35)), float(rng.uniform(0.22, 0.45))
    img = np.empty((height, width, 3), np.float32)
    img[:] = colorsys.hsv_to_rgb(hue, sat, val)
    amp = spec.background_contrast
    layers = rng.random(3) < 0.6
    if not layers.any():
        layers[int(rng.integers(3))] = True
    if layers[0]:  # smooth noise: a coarse random field, upsampled
        cells = int(rng.integers(4, 12))
        coarse = rng.uniform(-1, 1, size=(cells, cells, 3)).astype(np.float32)
        planes = [np.asarray(Image.fromarray(np.ascontiguousarray(coarse[..., c])).resize((width, height),
                                                                               Image.Resampling.BILINEAR))
                  for c in range(3)]
        img += amp * np.stack(planes, axis=-1)
    if layers[1]:  # stripes at a random angle and period
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        angle, period = float(rng.uniform(0, math.pi)), float(rng.uniform(5, 30))
        wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period)
        img += (0.6 * amp * wave)[..., None]
    if layers[2]:  # blobs: random ellipses of slightly shifted colour, as in a cluttered scene
        offsets = np.zeros((height, width, 3), np.float32)
        for _ in range(int(rng.integers(4, 16))):
            mask = Image.new("L", (width, height), 0)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            rx, ry = rng.uniform(4, width / 4), rng.uniform(4, height / 4)
            ImageDraw.Draw(mask).ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=255)
            m = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
            offsets = offsets * (1 - m) + m * rng.uniform(-amp, amp, size=3).astype(np.float32)
        img += offsets
    return img


# ---------------------------------------------------------------------------------------------- captions


def _an(word: str) -> str:
    # "one" starts with a vowel letter but a consonant sound: "a one", "an orange".
    return "an" if word[0] in "aeiou" and not word.startswith("one") else "a"


def _describe(rng: np.random.Generator, desc: _Desc, count: int, indefinite: bool = False) -> list[str]:
    """The words of a phrase for ``desc`` matching ``count`` objects: determiner, adjectives, noun, suffix.

    ``indefinite`` rules out "the" (after "there is").
    """
    adjectives: list[str] = []
    if desc.size is not None:
        words = _SIZE_WORDS[desc.size]
        adjectives.append(words[int(rng.integers(len(words)))])
    if desc.colour is not None:
        adjectives.append(desc.colour)
    suffix: tuple[str, ...] = ()
    if desc.texture is not None:
        suffixes = _TEXTURE_SUFFIX[desc.texture]
        if suffixes and rng.random() < 0.4:
            suffix = suffixes[int(rng.integers(len(suffixes)))]
        else:
            words = _TEXTURE_ADJ[desc.texture]
            adjectives.append(words[int(rng.integers(len(words)))])
    nouns = noun_forms(desc.category)
    singular, plural = nouns[int(rng.integers(len(nouns)))]
    body = adjectives + (plural if count > 1 else singular).split() + list(suffix)
    if count > 1:
        det = [NUMBER_WORDS[count]] if indefinite or rng.random() < 0.7 else ["the", NUMBER_WORDS[count]]
    else:
        det = [_an(body[0])] if indefinite or rng.random() < 0.5 else ["the"]
    return det + body


def _referents(objects: Sequence[SceneObject]) -> dict[tuple[int, ...], list[_Desc]]:
    """Every object set that some description picks out exactly, with those descriptions (in a fixed order)."""
    refs: dict[tuple[int, ...], list[_Desc]] = {}
    for obj in objects:
        # Texture words are never used for digits: they are always solid, and "a plain seven" is odd.
        say_texture = (False,) if obj.category in DIGIT_NAMES else (False, True)
        for colour, texture, size in product((False, True), say_texture, (False, True)):
            desc = _Desc(obj.category, obj.colour if colour else None, obj.texture if texture else None,
                         obj.size if size else None)
            matched = tuple(j for j, other in enumerate(objects) if desc.matches(other))
            if len(matched) > max(NUMBER_WORDS):
                continue
            known = refs.setdefault(matched, [])
            if desc not in known:
                known.append(desc)
    return refs


def _relations(a: Sequence[SceneObject], b: Sequence[SceneObject], near: float) -> list[str]:
    """Relations that hold between every object of ``a`` and every object of ``b``."""
    out = []
    if max(o.box.x2 for o in a) <= min(o.box.x1 for o in b):
        out.append("left")
    if max(o.box.x2 for o in b) <= min(o.box.x1 for o in a):
        out.append("right")
    if max(o.box.y2 for o in a) <= min(o.box.y1 for o in b):
        out.append("above")
    if max(o.box.y2 for o in b) <= min(o.box.y1 for o in a):
        out.append("below")
    gap = min(max(p.box.x1 - q.box.x2, q.box.x1 - p.box.x2, p.box.y1 - q.box.y2, q.box.y1 - p.box.y2)
              for p in a for q in b)
    if len(a) == 1 and len(b) == 1 and gap <= near:
        out.append("near")
    side = [max(o.box.width, o.box.height) for o in a], [max(o.box.width, o.box.height) for o in b]
    if all(o.size == "large" for o in a) and all(o.size == "small" for o in b) \
            and min(side[0]) >= _BIGGER_RATIO * max(side[1]):
        out.append("bigger")
    if all(o.size == "small" for o in a) and all(o.size == "large" for o in b) \
            and min(side[1]) >= _BIGGER_RATIO * max(side[0]):
        out.append("smaller")
    return out


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


class _Slot(NamedTuple):
    """A phrase placeholder in a caption being built: the referred objects, and whether "the" is ruled out."""

    objects: tuple[int, ...]
    indefinite: bool = False


def _caption(rng: np.random.Generator, objects: Sequence[SceneObject],
             refs: dict[tuple[int, ...], list[_Desc]], near: float) -> list[str | _Slot]:
    """One caption as a token list in which each phrase is a :class:`_Slot` placeholder.

    Kinds: one phrase ("there is a red circle"), two related phrases ("A left of B"), two joined by "and", or a
    relation followed by a second clause. The phrases of one caption refer to disjoint sets of objects.
    """
    keys = list(refs)
    a = _pick(rng, keys)
    be = "are" if len(a) > 1 else "is"

    def others(*used: tuple[int, ...]) -> list[tuple[int, ...]]:
        busy = {i for u in used for i in u}
        return [k for k in keys if busy.isdisjoint(k)]

    def related(x: tuple[int, ...], *used: tuple[int, ...]) -> list[tuple[tuple[int, ...], str]]:
        return [(k, r) for k in others(x, *used)
                for r in _relations([objects[i] for i in x], [objects[i] for i in k], near)]

    def clause(template: str, slots: dict[str, tuple[int, ...] | str | list[str]]) -> list[str | _Slot]:
        # After "there is/are" the subject must be indefinite: "there is a red circle", not "there is the ...".
        indefinite = template.startswith("there")
        out: list[str | _Slot] = []
        for token in template.split():
            value = slots[token[1:-1]] if token.startswith("{") else token
            if isinstance(value, tuple):
                out.append(_Slot(value, indefinite and token == "{A}"))
            elif isinstance(value, list):
                out.extend(value)
            else:
                out.append(value)
        return out

    def relation_words(r: str) -> list[str]:
        return _pick(rng, _RELATIONS[r]).split()

    kind = _pick(rng, ("single", "relation", "relation", "relation", "pair", "double"))
    pairs = related(a) if kind in ("relation", "double") else []
    if pairs:
        b, r = _pick(rng, pairs)
        tokens = clause(_pick(rng, _RELATION_TEMPLATES), {"A": a, "B": b, "be": be, "rel": relation_words(r)})
        rest = others(a, b) if kind == "double" else []
        if rest:
            c = _pick(rng, rest)
            more = related(c, a, b)
            if more and rng.random() < 0.5:
                d, r2 = _pick(rng, more)
                tokens += [_pick(rng, ("and", ","))] + clause("{A} {rel} {B}", {"A": c, "B": d,
                                                                                   "rel": relation_words(r2)})
            else:
                tokens += ["and", _Slot(c)]
        return tokens
    rest = others(a)
    if kind in ("pair", "double") and rest:
        return clause(_pick(rng, _PAIR_TEMPLATES), {"A": a, "B": _pick(rng, rest), "be": be})
    return clause(_pick(rng, _SINGLE_TEMPLATES), {"A": a, "be": be})


def _captions(rng: np.random.Generator, spec: SceneSpec, objects: Sequence[SceneObject], width: int,
              height: int) -> list[Caption]:
    """``spec.captions_per_image`` captions for one scene, phrases linked to boxes (empty for no objects)."""
    if not objects:  # pragma: no cover - the first object always fits, since every side <= the image side
        return []
    refs = _referents(objects)
    near = 0.15 * min(width, height)
    entity_ids: dict[tuple[int, ...], str] = {}
    captions: list[Caption] = []
    seen: set[str] = set()
    for _ in range(spec.captions_per_image):
        # A few redraws make the captions of one image distinct whenever the scene offers enough to say.
        for _attempt in range(8):
            words: list[str] = []
            mentions: list[tuple[tuple[int, ...], list[str], int]] = []
            for token in _caption(rng, objects, refs, near):
                if isinstance(token, str):
                    words.append(token)
                    continue
                phrase_words = _describe(rng, _pick(rng, refs[token.objects]), len(token.objects),
                                         token.indefinite)
                mentions.append((token.objects, phrase_words, len(words)))
                words.extend(phrase_words)
            if rng.random() < 0.3:
                words.append(".")
            text = " ".join(words)
            if text not in seen:
                break
        seen.add(text)
        phrases = []
        for members, phrase_words, first in mentions:
            # Entity ids are per image, numbered by first mention; one id always means one set of boxes.
            entity = entity_ids.setdefault(members, str(len(entity_ids) + 1))
            phrases.append(Phrase(" ".join(phrase_words), [objects[i].box for i in members],
                                  [objects[members[0]].category], entity, first))
        captions.append(Caption(text, phrases))
    return captions


# -------------------------------------------------------------------------------------------- generation


_SPLIT_INDEX = {name: i for i, name in enumerate(SPLITS)}
# Image ids are <split number><7 digits>: integers (COCO needs them) that never collide across splits.
_ID_STRIDE = 10_000_000


def _image_id(split: str, index: int) -> str:
    return str((_SPLIT_INDEX[split] + 1) * _ID_STRIDE + index)


class _Digits:
    """Digit sprites by class and pool, loaded only when a spec has digit categories."""

    def __init__(self, split_seed: int) -> None:
        from weakground.data.digits import digit_pools, load_digits_5k

        self.images, labels = load_digits_5k()
        pools = digit_pools(labels, 0.2, split_seed)
        self.by_pool = {pool: {d: idx[labels[idx] == d] for d in range(10)} for pool, idx in pools.items()}

    def sample(self, rng: np.random.Generator, split: str, name: str) -> np.ndarray:
        # Train scenes draw handwriting from the train pool; val/test scenes from the disjoint test pool.
        candidates = self.by_pool["train" if split == "train" else "test"][DIGIT_NAMES.index(name)]
        return self.images[int(candidates[int(rng.integers(len(candidates)))])]


_DIGIT_CACHE: dict[int, _Digits] = {}


def _digits(spec: SceneSpec) -> _Digits | None:
    if not any(c in DIGIT_NAMES for c in spec.categories):
        return None
    if spec.split_seed not in _DIGIT_CACHE:
        _DIGIT_CACHE[spec.split_seed] = _Digits(spec.split_seed)
    return _DIGIT_CACHE[spec.split_seed]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise WeakgroundError(f"unknown scene split {split!r}: expected one of {', '.join(SPLITS)}")


def make_scene(spec: SceneSpec, split: str, index: int) -> Scene:
    """Draw one scene; the result depends only on ``(spec, split, index)``.

    Args:
        spec: the scene spec.
        split: one of :data:`SPLITS`; ``"test_unseen"`` uses only :func:`heldout_pairs`, the others never do.
        index: position in the split (>= 0, < 10,000,000); the image id is ``<split number><index:07d>``,
            e.g. ``"10000003"`` for train image 3.

    Returns:
        The scene: record (``path=None``), RGB image and objects.

    Raises:
        WeakgroundError: unknown split, or ``test_unseen`` with no held-out pairs.
    """
    _check_split(split)
    return _make_scene(spec, split, index, _allowed_pairs(spec, split), _digits(spec))


def _make_scene(spec: SceneSpec, split: str, index: int, pairs: Sequence[tuple[str, str]],
                bank: _Digits | None) -> Scene:
    """:func:`make_scene` with the split's allowed pairs and the digit sprites already looked up."""
    if not 0 <= index < _ID_STRIDE:
        raise WeakgroundError(f"scene index must lie in [0, {_ID_STRIDE}), got {index}")
    rng = np.random.default_rng([spec.seed, _SPLIT_INDEX[split], index])
    width = int(rng.integers(spec.min_size, spec.max_size + 1))
    height = width if spec.square else int(rng.integers(spec.min_size, spec.max_size + 1))
    short = min(width, height)

    attrs = _sample_attrs(rng, spec, pairs)
    sides = []
    for a in attrs:
        lo, hi = spec.small_scale if a.size == "small" else spec.large_scale
        scale = _DIGIT_PATCH_SCALE if a.category in DIGIT_NAMES else 1.0
        sides.append(min(short, max(6, round(float(rng.uniform(lo, hi)) * short * scale))))
    spots = _place(rng, sides, width, height)

    canvas = _background(rng, spec, width, height)
    objects: list[SceneObject] = []
    for a, s, spot in zip(attrs, sides, spots):
        if spot is None:
            continue
        if a.category in DIGIT_NAMES:
            assert bank is not None
            alpha = _digit_alpha(bank.sample(rng, split, a.category), s)
        else:
            alpha = _shape_alpha(a.category, s, rng)
        alpha[alpha < _MIN_ALPHA] = 0.0
        rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
        if len(rows) == 0:
            continue
        # Small per-object colour jitter: appearance varies, the colour word stays right.
        rgb = np.clip(np.array(COLOURS[a.colour], np.float32) + rng.uniform(-12, 12, 3), 0, 255) / 255.0
        fill = _texture_fill(a.texture, rgb.astype(np.float32), s, rng)
        x, y = spot
        region = canvas[y:y + s, x:x + s]
        region[:] = region * (1.0 - alpha[..., None]) + fill * alpha[..., None]
        box = Box(float(x + cols[0]), float(y + rows[0]), float(x + cols[-1] + 1), float(y + rows[-1] + 1))
        objects.append(SceneObject(a.category, a.colour, a.texture, a.size, box))

    if spec.noise_std > 0:
        canvas += rng.normal(0.0, spec.noise_std, size=canvas.shape).astype(np.float32)
    image = Image.fromarray(np.round(np.clip(canvas, 0.0, 1.0) * 255.0).astype(np.uint8))

    captions = _captions(rng, spec, objects, width, height)
    record = ImageRecord(_image_id(split, index), None, width, height, captions, _coco_objects(spec, objects))
    return Scene(record, image, objects)


def _coco_objects(spec: SceneSpec, objects: Sequence[SceneObject]) -> list[Phrase]:
    """One phrase per category present, sorted by category id, as :func:`weakground.data.coco.read_coco` gives."""
    out = []
    for cid, category in enumerate(spec.categories, 1):
        boxes = [o.box for o in objects if o.category == category]
        if boxes:
            out.append(Phrase(category, boxes, [category], str(cid)))
    return out


def iter_scenes(spec: SceneSpec, split: str, n: int, start: int = 0) -> Iterator[Scene]:
    """Scenes ``start .. start + n - 1`` of a split, one at a time (constant memory).

    Args:
        spec: the scene spec.
        split: one of :data:`SPLITS`.
        n: number of scenes (>= 0).
        start: index of the first scene.

    Yields:
        :class:`Scene` s, the same as :func:`make_scene` for each index.
    """
    _check_split(split)
    if n < 0 or start < 0:
        raise WeakgroundError(f"scene count and start must be >= 0, got n={n}, start={start}")
    if n == 0:
        return
    pairs = _allowed_pairs(spec, split)
    bank = _digits(spec)
    for index in range(start, start + n):
        yield _make_scene(spec, split, index, pairs, bank)


def generate_scenes(spec: SceneSpec, n_train: int, n_val: int, n_test: int,
                    n_test_unseen: int = 0) -> dict[str, list[Scene]]:
    """Generate every split in memory (deterministic by ``spec.seed``; use :func:`write_scenes` for big sets).

    Args:
        spec: the scene spec.
        n_train: images in ``train``.
        n_val: images in ``val``.
        n_test: images in ``test`` (seen compositions).
        n_test_unseen: images in ``test_unseen`` (held-out colour-category pairs only).

    Returns:
        ``{split: [Scene, ...]}`` for the four :data:`SPLITS`, in index order.
    """
    counts = dict(zip(SPLITS, (n_train, n_val, n_test, n_test_unseen)))
    return {split: list(iter_scenes(spec, split, n)) for split, n in counts.items()}


# ---------------------------------------------------------------------------------------------- writing


def _link_or_copy(source: Path, destination: Path) -> None:
    # A hard link shares the JPEG between the Flickr30K and COCO layouts without doubling the disk use.
    if destination.exists():
        destination.unlink()
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def write_scenes(out_dir: str | Path, spec: SceneSpec, n_train: int, n_val: int, n_test: int,
                 n_test_unseen: int = 0, *, coco: bool = True, jpeg_quality: int = 95) -> dict:
    """Generate the scenes and write them in the Flickr30K Entities layout and as COCO captions.

    Written under ``out_dir``::

        Images/<id>.jpg  Sentences/<id>.txt  Annotations/<id>.xml      (write_flickr30k_entities; phrase type =
        train.txt  val.txt  test.txt  test_unseen.txt                   the category: [/EN#3/circle a red circle])
        annotations/captions_<split>.json  annotations/instances_<split>.json   (write_coco_captions)
        <split>/<id>.jpg                 hard links to Images/ (copies where links fail), where read_coco looks
        scenes.json                      the spec, the held-out pairs and every object's attributes and box

    Args:
        out_dir: output directory (created; existing files of the same names are overwritten).
        spec: the scene spec.
        n_train: images in ``train``.
        n_val: images in ``val``.
        n_test: images in ``test``.
        n_test_unseen: images in ``test_unseen``.
        coco: also write the COCO JSON files and ``<split>/`` image links.
        jpeg_quality: JPEG quality of the written images.

    Returns:
        Summary: ``root``, per split ``images``/``captions``/``phrases``/``plural_phrases`` counts,
        ``heldout_pairs``, per split ``baselines`` (:func:`baseline_rates`) and the ``spec`` as a dict.
    """
    root = Path(out_dir)
    images_dir = root / "Images"
    images_dir.mkdir(parents=True, exist_ok=True)
    counts = dict(zip(SPLITS, (n_train, n_val, n_test, n_test_unseen)))
    records: dict[str, list[ImageRecord]] = {}
    objects: dict[str, dict[str, list[dict]]] = {}
    for split, n in counts.items():
        records[split], objects[split] = _write_images(spec, split, n, images_dir, jpeg_quality)
    all_records = [r for split in SPLITS for r in records[split]]
    write_flickr30k_entities(all_records, root, {s: [r.image_id for r in records[s]] for s in SPLITS},
                             copy_images=False)
    if coco:
        _write_coco_layout(root, records)
    held = heldout_pairs(spec)
    (root / "scenes.json").write_text(json.dumps({"spec": asdict(spec), "heldout_pairs": held,
                                                  "objects": objects}), encoding="utf-8")
    return _written_summary(root, spec, records, held)


def _write_images(spec: SceneSpec, split: str, n: int, images_dir: Path, jpeg_quality: int
                  ) -> tuple[list[ImageRecord], dict[str, list[dict]]]:
    """Generate ``split``'s ``n`` scenes and save their JPEGs: the records (with paths) and, per image id, its
    objects' attributes and boxes (for ``scenes.json``)."""
    records: list[ImageRecord] = []
    objects: dict[str, list[dict]] = {}
    for scene in iter_scenes(spec, split, n):
        path = images_dir / f"{scene.record.image_id}.jpg"
        scene.image.save(path, quality=jpeg_quality)
        scene.record.path = path
        records.append(scene.record)
        objects[scene.record.image_id] = [
            {"category": o.category, "colour": o.colour, "texture": o.texture, "size": o.size,
             "box": o.box.as_list()} for o in scene.objects]
    return records, objects


def _write_coco_layout(root: Path, records: dict[str, list[ImageRecord]]) -> None:
    """COCO captions/instances JSON per split, and ``<split>/`` links to the images where read_coco looks."""
    for split in SPLITS:
        split_dir = root / split
        split_dir.mkdir(exist_ok=True)
        for record in records[split]:
            assert record.path is not None
            _link_or_copy(record.path, split_dir / record.path.name)
        write_coco_captions(records[split], root / "annotations" / f"captions_{split}.json",
                            root / "annotations" / f"instances_{split}.json", image_dir=split_dir)


def _written_summary(root: Path, spec: SceneSpec, records: dict[str, list[ImageRecord]],
                     held: list[tuple[str, str]]) -> dict:
    phrases = {s: [p for r in records[s] for c in r.captions for p in c.phrases] for s in SPLITS}
    return {
        "root": str(root),
        "images": {s: len(records[s]) for s in SPLITS},
        "captions": {s: sum(len(r.captions) for r in records[s]) for s in SPLITS},
        "phrases": {s: len(phrases[s]) for s in SPLITS},
        "plural_phrases": {s: sum(len(p.boxes) > 1 for p in phrases[s]) for s in SPLITS},
        "heldout_pairs": [list(p) for p in held],
        "baselines": {s: baseline_rates(records[s]) for s in SPLITS if records[s]},
        "spec": asdict(spec),
    }


# --------------------------------------------------------------------------------------------- baselines


def baseline_rates(records: Iterable[ImageRecord]) -> dict[str, float]:
    """Centre-point and random-point pointing accuracy over every caption phrase (tolerance 0, any box).

    The same geometry as :mod:`weakground.metrics.pointing` (``center_baseline`` and the exact
    ``random_baseline_accuracy`` under the default protocol), computed here with numpy so data code needs no
    torch. Each phrase mention in each caption is one query ``q`` with boxes ``B_q`` on a ``W x H`` image:

    * centre: hit iff the point ``(W / 2, H / 2)`` satisfies ``x1 <= x < x2 and y1 <= y < y2`` for some box;
    * random: ``p_q = #{pixels whose centre (j + .5, i + .5) lies in some box of B_q} / (W H)``, i.e. the area of
      the union of the phrase's boxes over the image area for integer boxes; the rate is ``mean_q p_q``.

    Args:
        records: image records whose captions carry grounded phrases.

    Returns:
        ``{"center": float, "random": float, "n_phrases": int}``; rates are ``nan`` with no phrase.
    """
    centre_hits: list[bool] = []
    random_rates: list[float] = []
    for record in records:
        w, h = record.width, record.height
        cx, cy = w / 2.0, h / 2.0
        for caption in record.captions:
            for phrase in caption.phrases:
                boxes = np.array([b.as_list() for b in phrase.boxes], dtype=np.float64).reshape(-1, 4)
                boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
                if len(boxes) == 0:
                    continue
                centre_hits.append(bool(((boxes[:, 0] <= cx) & (cx < boxes[:, 2])
                                         & (boxes[:, 1] <= cy) & (cy < boxes[:, 3])).any()))
                xs, ys = np.arange(w) + 0.5, np.arange(h) + 0.5
                covered = np.zeros((h, w), dtype=bool)
                for x1, y1, x2, y2 in boxes:
                    covered |= ((ys >= y1) & (ys < y2))[:, None] & ((xs >= x1) & (xs < x2))[None, :]
                random_rates.append(float(covered.sum()) / (w * h))
    n = len(centre_hits)
    return {
        "center": float(np.mean(centre_hits)) if n else float("nan"),
        "random": float(np.mean(random_rates)) if n else float("nan"),
        "n_phrases": n,
    }
