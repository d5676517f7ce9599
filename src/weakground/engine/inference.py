"""The one inference layer: load a grounder by method name or checkpoint, and turn an image and phrases into
heatmaps, points and boxes.

``weakground locate``, ``weakground serve``, ``weakground eval``/``retrieve`` and the Python API
(:func:`weakground.load`) all come through here, so a phrase gets the same answer whichever door it came in by:

    source (a method name or a .safetensors checkpoint) --load--> Predictor
    image (path | PIL image | HxWxC uint8 array) + phrases --Predictor.locate--> list[Grounding]

:func:`ground_maps` is the single "heatmaps -> boxes -> argmax point" step; the multi-MNIST evaluator uses it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from weakground.config import (BackboneConfig, EvalConfig, ExperimentConfig, MethodConfig, OverridePolicy,
                               config_from_json, override_config)
from weakground.errors import CheckpointError, ConfigError, InputError, WeakgroundError
# Checked before any model (or torch) loads; re-exported here, where every door has always found them.
from weakground.engine.inputs import IMAGE_SUFFIXES, MAX_PHRASE_CHARS, check_phrases  # noqa: F401
from weakground.methods import Captioner, Grounder, InferenceSettings, create_method
from weakground.metrics import PresenceCalibration, resize_heatmap
from weakground.metrics.instances import BoxRule
from weakground.registry import METHODS

# How a checkpoint reads images, as opposed to what it learned: the only settings eval/locate --set may change.
# The evaluation protocols (how phrases are read, what ranks retrieval) are not learned either.
CHECKPOINT_POLICY = OverridePolicy(("data.eval_resize", "eval.shift_average", "eval.phrase_context", "eval.retrieval"),
                                   "a checkpoint's settings are fixed except data.eval_resize, eval.shift_average, "
                                   "eval.phrase_context, eval.retrieval")


def method_policy(name: str) -> OverridePolicy:
    """A fixed method built by name takes its own settings only."""
    return OverridePolicy(("method.params.*",), f"only method.params.KEY=VALUE applies to --method {name}")


@dataclass
class Grounding:
    """One phrase grounded in one image.

    Attributes:
        phrase: the phrase as grounded (whitespace normalised).
        point: ``(x, y)``, the 0-based pixel of the heatmap's peak.
        peak: the heatmap's maximum (method-specific scale; not a calibrated confidence).
        boxes: ``(x1, y1, x2, y2)`` in pixel edges, best first: instance boxes (one per object, grown from each
            peak) or the regions at or above ``threshold x peak`` (see :meth:`Predictor.box_rule`).
        box_scores: each box's peak value.
        heatmap: ``[H, W]`` float32, the map resized to the image.
        presence: the calibrated probability that the phrase is in the image (the method's presence score through
            its :class:`~weakground.metrics.PresenceCalibration`); ``None`` for a method with no calibration.
        found: ``presence >= `` the calibration's threshold; ``None`` when uncalibrated. False: "not found" (the
            point, boxes and map are still given, for a look); always False for a flat map (nothing to point at).
    """

    phrase: str
    point: tuple[int, int]
    peak: float
    boxes: list[tuple[float, float, float, float]]
    box_scores: list[float]
    heatmap: np.ndarray = field(repr=False)
    presence: float | None = None
    found: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, without the heatmap."""
        return {"phrase": self.phrase, "point": list(self.point), "peak": self.peak,
                "boxes": [list(b) for b in self.boxes], "box_scores": list(self.box_scores),
                "presence": self.presence, "found": self.found}


# Instance boxes (region growing from each peak, :func:`weakground.metrics.instances.instance_boxes`) at the
# rule's defaults: on the bundled demo photos they lift box accuracy from 0.175 (threshold 0.5) to 0.404
# (benchmarks/instance_boxes.py --method bridge).
INSTANCE_RULE = BoxRule("instance", grow=0.3, min_peak=0.5)
BOX_KINDS = ("threshold", "instance")
# A map whose range is below this fraction of its peak has no peak to point at (a blank image, a phrase the
# method gives no evidence anywhere): its phrase is "not found" and gets no box.
FLAT_MAP_RANGE = 1e-6


def ground_maps(maps: Tensor, phrases: Sequence[str], threshold: float | BoxRule) -> list[Grounding]:
    """Heatmaps at the image's size -> one :class:`Grounding` per phrase: the argmax point (first in raster
    order on ties) and its boxes.

    Args:
        maps: ``[P, H, W]`` non-negative maps, already resized to the image.
        phrases: the P phrases.
        threshold: the box threshold as a fraction of each map's peak, in [0, 1] (8-connected regions at or
            above it), or a :class:`~weakground.metrics.instances.BoxRule` (e.g. instance boxes).

    A flat map (no value above the rest, e.g. on a blank image) gets no box and ``found=False``.
    """
    rule = threshold if isinstance(threshold, BoxRule) else BoxRule("threshold", threshold=float(threshold))
    results = []
    for phrase, hm in zip(phrases, maps):
        hm = hm.detach().float().cpu()
        peak = float(hm.max())
        flat = not bool(torch.isfinite(hm).all()) or float(hm.max() - hm.min()) <= FLAT_MAP_RANGE * max(1.0, abs(peak))
        boxes, scores = (torch.zeros(0, 4), torch.zeros(0)) if flat else rule.boxes(hm)
        y, x = divmod(int(hm.argmax()), hm.shape[1])
        results.append(Grounding(phrase, (x, y), peak, [tuple(float(v) for v in b) for b in boxes.tolist()],
                                 [float(s) for s in scores], hm.numpy(), found=False if flat else None))
    return results


def as_image_array(image: Any, channels: int) -> tuple[np.ndarray, str]:
    """A path, a PIL image or a uint8 array -> (``[H, W]`` / ``[H, W, 3]`` uint8, a label for messages)."""
    from weakground.io import pil_to_array, read_image

    if isinstance(image, (str, Path)):
        return read_image(Path(image), channels=channels), str(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
            raise InputError(f"image array must be uint8 [H, W] or [H, W, 3], got {image.dtype} {image.shape}")
        from PIL import Image

        return pil_to_array(Image.fromarray(image.squeeze(-1) if image.ndim == 3 and image.shape[2] == 1
                                            else image), channels), "array"
    if hasattr(image, "convert") and hasattr(image, "mode"):  # a PIL image
        return pil_to_array(image, channels), "image"
    raise InputError(f"cannot read an image from a {type(image).__name__}: give a path, a PIL image or a uint8 array")


class Predictor:
    """A grounder loaded for use: what ``locate``, ``serve``, ``eval`` and :func:`weakground.load` hand out.

    Attributes:
        model: the :class:`~weakground.methods.Grounder`, in eval mode.
        config: the checkpoint's resolved experiment config (``None`` for a method built by name).
        box_threshold: default box threshold (the one chosen on validation at training, else 0.5).
        default_boxes: the box kind given when none is asked for: ``"instance"`` for a method whose maps are
            uneven over an object (``bridge``'s class-activation maps on photos), else ``"threshold"``.
        calibration: the presence calibration (``None``: the method gives no presence verdict).
        source: the method name or checkpoint path it was loaded from.
    """

    def __init__(self, model: Grounder, box_threshold: float, source: str,
                 config: ExperimentConfig | None = None) -> None:
        self.model, self.box_threshold, self.source, self.config = model.eval(), box_threshold, source, config
        self.default_boxes = getattr(model, "default_boxes", "threshold")
        # A checkpoint's calibration was fitted on its validation split at training; a fixed method may carry one.
        self.calibration = (PresenceCalibration.from_list(config.eval.presence_calibration) if config is not None
                            else getattr(model, "presence_calibration", None))

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def channels(self) -> int:
        """Image channels the method reads (1: multi-MNIST digits, 3: photos)."""
        return int(self.model.backbone_config.in_channels)

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.empty(0)).device

    @property
    def has_joint_space(self) -> bool:
        return self.model.has_joint_space

    def heatmaps(self, images: Tensor, phrases: Sequence[str]) -> Tensor:
        """``[B, C, H, W]`` float images in [0, 1] -> ``[B, P, h, w]`` maps (the method's grid; resize with
        :func:`weakground.metrics.resize_heatmap`)."""
        with torch.no_grad():
            return self.model.grounding_maps(images.to(self.device), list(phrases))

    def locate_array(self, image: np.ndarray, phrases: Sequence[str], threshold: float | None = None,
                     boxes: str | None = None) -> list[Grounding]:
        """:meth:`locate` for a decoded uint8 image (what the web app holds after decoding an upload)."""
        from weakground.io import image_to_tensor

        rule = self.box_rule(threshold, boxes)
        phrases = check_phrases(phrases)
        (maps, raw), = self.maps_and_presence_many([image_to_tensor(image)], [phrases])
        return self.ground(image, maps[0], phrases, rule, None if raw is None else raw[0].tolist())

    def with_presence(self, groundings: list[Grounding], raw: Sequence[float]) -> list[Grounding]:
        """``groundings`` with :attr:`Grounding.presence` and ``found`` from their phrases' raw presence scores
        through :attr:`calibration` (which must be set). A flat map stays not found."""
        for grounding, score in zip(groundings, raw):
            grounding.presence = round(self.calibration.probability(score), 4)
            grounding.found = grounding.presence >= self.calibration.threshold and grounding.found is not False
        return groundings

    def checked_threshold(self, threshold: float | None) -> float:
        """The box threshold to use (default: :attr:`box_threshold`); :class:`InputError` outside [0, 1]."""
        threshold = self.box_threshold if threshold is None else threshold
        if not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold {threshold}: must lie in [0, 1] (a fraction of the map's peak)")
        return threshold

    def box_rule(self, threshold: float | None = None, boxes: str | None = None) -> BoxRule:
        """The boxes asked for: ``boxes`` ``"instance"`` (one per object) or ``"threshold"`` (regions at or above
        ``threshold`` x the peak, default :attr:`box_threshold`); ``None``: :attr:`default_boxes`, or threshold
        boxes when a ``threshold`` is given. One-line :class:`InputError` for an unknown kind, or a threshold
        given with instance boxes (it would be ignored)."""
        kind = boxes if boxes is not None else ("threshold" if threshold is not None else self.default_boxes)
        if kind not in BOX_KINDS:
            raise InputError(f"boxes {kind!r}: must be one of {', '.join(BOX_KINDS)}")
        if kind == "instance":
            if threshold is not None:
                raise InputError("a box threshold applies to threshold boxes; instance boxes grow from each peak "
                                 "(drop the threshold, or ask for threshold boxes)")
            return INSTANCE_RULE
        return BoxRule("threshold", threshold=self.checked_threshold(threshold))

    def ground(self, image: np.ndarray, maps: Tensor, phrases: Sequence[str], rule: float | BoxRule,
               raw_presence: Sequence[float] | None = None) -> list[Grounding]:
        """One image's ``[P, h, w]`` maps (from :meth:`heatmaps`) resized to ``image`` and grounded with the box
        ``rule``; with ``raw_presence`` (from :meth:`maps_and_presence_many`) and a calibration, each phrase's
        presence and verdict too."""
        found = ground_maps(resize_heatmap(maps.float().cpu(), tuple(image.shape[:2])), phrases, rule)
        if raw_presence is None or self.calibration is None:
            return found
        return self.with_presence(found, raw_presence)

    def heatmaps_many(self, images: Sequence[Tensor], phrases: Sequence[Sequence[str]]) -> list[Tensor]:
        """:meth:`heatmaps` of several requests, each ``[1, C, H, W]`` with its own phrases -> one ``[1, P_i, h,
        w]`` per request (see :meth:`maps_and_presence_many`)."""
        return [maps for maps, _ in self.maps_and_presence_many(images, phrases, presence=False)]

    def maps_and_presence_many(self, images: Sequence[Tensor], phrases: Sequence[Sequence[str]],
                               presence: bool | None = None) -> list[tuple[Tensor, Tensor | None]]:
        """Per request (``[1, C, H, W]`` with its own phrases): its ``[1, P_i, h, w]`` maps and ``[1, P_i]`` raw
        presence scores (``None`` when ``presence`` is False; by default given when there is a
        :attr:`calibration` to read them). A method with a batched path (``bridge``'s
        ``grounding_maps_and_presence_many``) runs the requests together; any other, or one averaging shifted
        copies, runs them one after the other."""
        presence = self.calibration is not None if presence is None else presence
        images = [image.to(self.device) for image in images]
        phrases = [list(texts) for texts in phrases]
        batched = getattr(self.model, "grounding_maps_and_presence_many", None)
        settings = getattr(self.model, "inference", None)
        with torch.no_grad():
            if batched is not None and (settings is None or settings.shift_average <= 1):
                pairs = batched(images, phrases)
                return [(maps, raw if presence else None) for maps, raw in pairs]
            if presence:
                return [self.model.grounding_maps_and_presence(image, texts) for image, texts in zip(images, phrases)]
            return [(self.model.grounding_maps(image, texts), None) for image, texts in zip(images, phrases)]

    def locate(self, image: Any, phrases: Sequence[str], threshold: float | None = None,
               boxes: str | None = None) -> list[Grounding]:
        """Ground each phrase in ``image`` (a path, a PIL image or a uint8 ``[H, W(, 3)]`` array); ``boxes``
        ``"instance"`` or ``"threshold"`` (default: :attr:`default_boxes`, see :meth:`box_rule`)."""
        array, _ = as_image_array(image, self.channels)
        return self.locate_array(array, phrases, threshold, boxes)

    def require_joint_space(self) -> None:
        """One-line :class:`InputError` unless the method embeds images and texts in one space (retrieval)."""
        if not self.has_joint_space:
            raise InputError(f"{self.source}: method {self.name!r} has no joint image-text space; retrieval "
                             f"needs a caption method's checkpoint")

    def retrieve(self, texts: Sequence[str], images: Sequence[str | Path], k: int = 5, rerank: int = 50,
                 progress: bool = False) -> list[list[dict[str, Any]]]:
        """Text -> image: for each text, the ``k`` best of the image files ``images`` (``rank``, ``score``,
        ``path``); unreadable files are skipped."""
        from weakground.engine import retrieval

        self.require_joint_space()
        gallery, _ = retrieval.build_gallery(self.model, [Path(p) for p in images], self.source, progress)
        return retrieval.search_text(self.model, gallery, list(texts), k, rerank)

    def rank_captions(self, image: Any, captions: Sequence[str], k: int = 5) -> list[dict[str, Any]]:
        """Image -> text: the ``k`` best of ``captions`` for ``image`` (``rank``, ``score``, ``caption``)."""
        from weakground.engine import retrieval
        from weakground.io import image_to_tensor

        self.require_joint_space()
        array, _ = as_image_array(image, self.channels)
        return retrieval.rank_captions(self.model, image_to_tensor(array), list(captions), k)


def inference_settings(config: ExperimentConfig) -> InferenceSettings:
    """How a trained model reads images: caption-trained methods see them resized to the training square when
    ``data.eval_resize`` is on, label-trained ones (multi-MNIST) at the size they come in; every method averages
    ``eval.shift_average``^2 shifted copies (see :class:`~weakground.methods.InferenceSettings`)."""
    from weakground.data.sources import LABEL_GROUNDING, dataset_source

    caption_trained = dataset_source(config.data.name).task != LABEL_GROUNDING
    size = config.data.image_size if caption_trained and config.data.eval_resize else None
    return InferenceSettings(input_size=size, shift_average=config.eval.shift_average)


def build_trained_method(config: ExperimentConfig, class_names: list[str]) -> Grounder:
    """The method ``config`` describes, with its inference settings (weights as initialised)."""
    return create_method(config.method.name, config.backbone, class_names, config.method.params,
                         inference=inference_settings(config))


def load_checkpoint(path: Path, device: torch.device | str = "cpu", overrides: Sequence[str] = (),
                    command: str = "eval") -> tuple[Grounder, ExperimentConfig]:
    """Rebuild a trained method from a ``.safetensors`` checkpoint written by the trainer; ``overrides``
    (``--set``) may change how it reads images (:data:`CHECKPOINT_POLICY`), nothing it learned."""
    from weakground.engine.checkpoint import load_weights, read_checkpoint

    path = Path(path)
    state, meta = read_checkpoint(path)
    if meta.get("stage") == "pretrain":
        raise CheckpointError(f"{path}: this is a backbone-pretraining checkpoint, not a grounding method's")
    for key in ("method", "class_names", "config"):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata lacks {key!r}")
    config = config_from_json(json.dumps(meta["config"]), f"{path} (saved config)")
    if config.method.name != meta["method"]:
        raise CheckpointError(f"{path}: metadata names method {meta['method']!r} but its config {config.method.name!r}")
    names = meta["class_names"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{path}: checkpoint metadata 'class_names' must be a list of strings, got {names!r:.60}")
    config = override_config(config, overrides, CHECKPOINT_POLICY, command)
    try:
        model = build_trained_method(config, names)
    except (TypeError, ValueError, RuntimeError) as exc:
        # A hand-edited config (a negative size, a string where a number belongs) fails inside a constructor.
        raise CheckpointError(f"{path}: its saved config cannot build method {config.method.name!r} "
                              f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    load_weights(path, model, state)
    return model.to(device).eval(), config


def build_fixed_method(name: str, overrides: Sequence[str] = (), command: str = "locate") -> Grounder:
    """A method that needs no training (``bridge``, ``center``), built by name on RGB images; ``overrides``
    may set its ``method.params``."""
    cls = METHODS.get(name)  # unknown name: one line listing the registered methods
    if cls.trainable:
        fixed = ", ".join(n for n in METHODS.names() if not METHODS.get(n).trainable)
        raise WeakgroundError(f"method {name!r} must be trained first: pass --checkpoint (methods that need no "
                              f"training: {fixed})")
    config = override_config(ExperimentConfig(method=MethodConfig(name=name)), overrides, method_policy(name), command)
    # A fixed method reads the files' own RGB; a checkpoint fixes its channel count instead.
    return create_method(name, BackboneConfig(in_channels=3), [], config.method.params)


def _is_path(source: str | Path) -> bool:
    """A checkpoint is named by a path (a ``Path``, or text with a folder separator or a file suffix); a method
    by a bare registered name."""
    text = str(source)
    return isinstance(source, Path) or "/" in text or "\\" in text or Path(text).suffix != ""


def load(source: str | Path = "bridge", *, method: str | None = None, overrides: Sequence[str] = (),
         device: torch.device | str = "cpu", command: str = "locate") -> Predictor:
    """A :class:`Predictor` for a method name (one that needs no training) or a trainer's checkpoint.

    Args:
        source: a method that needs no training by name (``"bridge"``, ``"center"``), or a path to a
            ``.safetensors`` checkpoint.
        method: with a checkpoint, the method it must hold (a mismatch is a one-line error).
        overrides: ``--set`` strings: a checkpoint's image-reading settings, or a named method's params.
        device: where the model runs.
        command: the CLI command named in error messages.
    """
    if _is_path(source):
        path = Path(source)
        model, config = load_checkpoint(path, device, overrides, command)
        if not isinstance(model, Grounder):
            raise WeakgroundError(f"{path}: method {config.method.name!r} writes captions and grounds no phrase: "
                                  f"use `weakground caption IMAGE --checkpoint {path}`")
        if method is not None and method != config.method.name:
            raise WeakgroundError(f"--method {method!r} differs from the checkpoint's method "
                                  f"{config.method.name!r}; drop --method")
        return Predictor(model, config.eval.box_threshold, str(path), config)
    if method is not None and method != source:
        raise ConfigError(f"two method names given: {source!r} and {method!r}")
    model = build_fixed_method(str(source), overrides, command).to(device)
    return Predictor(model, EvalConfig().box_threshold, str(source))


@dataclass
class GroundedCaption:
    """A caption written for an image, with each object word grounded in a region.

    Attributes:
        caption: the words written, joined by spaces.
        objects: per object word written (in order): ``{"word", "class", "box"}``, the box ``[x1, y1, x2, y2]``
            in the image's pixels: the region the captioner attended most (largest gamma) when it wrote the word.
    """

    caption: str
    objects: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"caption": self.caption, "objects": self.objects}


class CaptionPredictor:
    """A trained captioner (``ss_attention``, ``updown``) loaded for use; what ``weakground caption`` runs."""

    def __init__(self, model: Any, config: ExperimentConfig, source: str) -> None:
        from weakground.regions import RegionEncoder, build_source

        self.model, self.config, self.source = model.eval(), config, source
        region_config = model.region_config
        self.regions = build_source(region_config)
        if self.regions.needs_ground_truth:
            raise ConfigError(f"{source}: its regions come from {region_config.source!r}, which needs ground-truth "
                              f"boxes; retrain with a proposal source that does not (e.g. components)")
        self.encoder = RegionEncoder(region_config)

    def caption(self, image: Any, beam: int | None = None) -> GroundedCaption:
        """Write a caption for ``image`` (a path, a PIL image or a uint8 array) and ground its object words."""
        from weakground.regions import resize_square, scale_boxes

        array, _ = as_image_array(image, 3)
        size = self.config.data.image_size
        resized = resize_square(array, size)
        regions = self.encoder(resized[None], [self.regions.boxes(resized, None)])
        (ids, gamma), = self.model.generate(regions.decoder_inputs(), beam)
        objects = self.model.grounded_objects(ids, gamma, regions.boxes[0])
        for obj in objects:  # back from the encoder's square to the image's own pixels
            obj["box"] = [float(v) for v in scale_boxes(obj["box"], (size, size), array.shape[:2])[0]]
        return GroundedCaption(" ".join(self.model.class_names[w] for w in ids), objects)


def load_captioner(path: Path, device: torch.device | str = "cpu") -> CaptionPredictor:
    """A :class:`CaptionPredictor` for a captioner's checkpoint (one-line error for any other checkpoint)."""
    model, config = load_checkpoint(path, device, command="caption")
    if not isinstance(model, Captioner):
        raise WeakgroundError(f"{path}: method {config.method.name!r} is not a captioner (ss_attention, updown)")
    return CaptionPredictor(model, config, str(path))
