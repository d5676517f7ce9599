"""Registries: one per kind of component, mapping a name to a factory.

Components register themselves with a decorator where they are defined; the CLI offers the registered names as
choices, so adding a method or a dataset never touches an if/elif ladder.
"""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from weakground.errors import WeakgroundError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories for one kind of component (methods, datasets, backbones, ...)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise WeakgroundError(f"unknown {self.kind} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries


METHODS: Registry = Registry("method")
BACKBONES: Registry = Registry("backbone")
DATASETS: Registry = Registry("dataset")
REGION_SOURCES: Registry = Registry("region source")
# Image encoders the caption methods choose by name (method.params.image_encoder), registered in weakground.vision
# (importing that package registers them all): ``factory(backbone_config, finetune) -> module``. Every module offers
# ``channels`` (level name -> channels), ``levels(images, names) -> {name: [B, C, h, w]}``, ``feature_map(images,
# level)`` and ``feature_channels(level)`` (the one map a single-level method reads), ``selects_level`` (whether
# that map depends on ``level``) and ``pretrained_parameters()`` (pretrained weights that train here).
IMAGE_ENCODERS: Registry = Registry("image encoder")
# Text encoders (method.params.text_encoder), registered in weakground.text (importing it registers them all):
# ``factory(options: weakground.text.encoders.TextEncoderOptions) -> module``; see weakground.text.encoders for
# what every one offers.
TEXT_ENCODERS: Registry = Registry("text encoder")
