"""ONNX export of a grounder's image side: run its heatmaps with onnxruntime.

Phrases are text, which ONNX graphs of tokenizers handle badly, so the work is split where the method's own code
splits it: the text side stays in Python, the image encoder and the heatmap head go into the graph::

    phrases --(Python: the method's own text code)--> phrase inputs [P, K]
    image [B, 3, H, W] in [0, 1] --(Python: the method's resize)--> prepared image [B, 3, H', W']
    ONNX graph: (prepared image, phrase inputs) --> maps [B, P, h, w]      (what Predictor.heatmaps returns)

Per method (:data:`EXPORTABLE`):

* ``bridge``: K = 1000, the phrase's text weights over the ImageNet classes (:meth:`Bridge.text_weights`); the
  graph holds EfficientNet-Lite0, the image evidence, the class mixture, the contrastive CAM, the x4 upsampling
  and the peak normalisation. The face prior for head-part phrases ("her face") runs in Python after the graph,
  as in :meth:`Bridge.heatmaps`. One scale only (``method.params.scales=[1.0]``, the default).
* ``dsve_loc`` (a trained checkpoint): K = D, the unit text embeddings (:meth:`DSVELoc.encode_text`); the graph
  holds the image encoder and ``floor(<A G, v>)``.

Batch, image height/width and the phrase count are dynamic axes. :func:`export_onnx` writes ``model.onnx`` and a
sidecar ``model.json`` (method, source, input size, the phrase input, the weakground version);
:class:`OnnxGrounder` reads both and returns the same maps as :meth:`Predictor.heatmaps` on equal inputs.
Needs the ``export`` extra (``pip install 'weakground[export]'``: onnx, onnxruntime).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Sequence

from weakground.errors import WeakgroundError

OPSET = 17
SIDECAR_FORMAT = "weakground-onnx/1"
EXPORTABLE = {
    "bridge": "text weights over the 1000 ImageNet classes per phrase (Bridge.text_weights), rows summing to 1",
    "dsve_loc": "unit text embeddings per phrase (DSVELoc.encode_text)",
}
# Why the others are refused (one line each, named in the error).
NOT_EXPORTABLE = {
    "center": "it has no network (a Gaussian drawn at the image's size): nothing to export",
    "multilevel": "its maps match every word of a phrase at several feature levels and choose a level per word; "
                  "that word-level head has no graph wrapper yet",
    "matchmap": "its maps pool word-region matchmaps over each phrase's words; that word-level head has no graph "
                "wrapper yet",
}


def sidecar_path(onnx_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.json``, the description written next to it."""
    return Path(onnx_path).with_suffix(".json")


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise WeakgroundError("ONNX export needs the packages onnx and onnxruntime: "
                              "pip install 'weakground[export]'") from None


def _check_exportable(model: Any, source: str) -> None:
    """One-line :class:`WeakgroundError` for a method (or a setting of one) the export does not cover."""
    name = model.name
    if name not in EXPORTABLE:
        why = NOT_EXPORTABLE.get(name, "its heatmap head has no graph wrapper yet")
        raise WeakgroundError(f"{source}: method {name!r} cannot be exported to ONNX: {why} "
                              f"(exportable: {', '.join(EXPORTABLE)})")
    if name == "bridge" and list(model.config.scales) != [1.0]:
        raise WeakgroundError(f"{source}: bridge with method.params.scales={list(model.config.scales)} cannot be "
                              f"exported: the graph reads one scale (use scales=[1.0])")


def _graph_module(model: Any) -> Any:
    """The ``nn.Module`` ``(prepared images, phrase inputs) -> maps`` that goes into the graph."""
    from torch import nn
    from torch.nn import functional as F

    from weakground.methods.bridge import _normalise

    class BridgeGraph(nn.Module):
        def __init__(self, bridge: Any) -> None:
            super().__init__()
            self.encoder, self.config = bridge.encoder, bridge.config

        def forward(self, images: Any, text: Any) -> Any:  # [B, 3, H, W], [P, 1000]
            import torch

            head = self.encoder(images, levels=("head",))["head"]
            evidence = torch.softmax(self.encoder.logits(head), dim=-1)
            weights = text[None] * (evidence[:, None] + self.config.evidence_floor) ** self.config.evidence_power
            cam = self.encoder.class_activation(head, weights / weights.sum(-1, keepdim=True))
            if self.config.contrast:
                cam = cam - self.config.contrast * self.encoder.class_activation(head, evidence[:, None])
            return _normalise(F.interpolate(cam, scale_factor=4.0, mode="bilinear", align_corners=False))

    class DsveGraph(nn.Module):
        def __init__(self, dsve: Any) -> None:
            super().__init__()
            self.dsve = dsve

        def forward(self, images: Any, text: Any) -> Any:  # [B, 3, S, S], [P, D]
            maps = self.dsve.image_encoder.feature_map(images, self.dsve.config.level).contiguous()
            return self.dsve.localize(maps, text)

    return (BridgeGraph if model.name == "bridge" else DsveGraph)(model).eval()


def phrase_inputs(model: Any, phrases: Sequence[str]) -> Any:
    """``[P, K]`` float32: what the graph reads per phrase, computed with the method's own Python text code."""
    import torch

    with torch.no_grad():
        if model.name == "bridge":
            return model.text_weights(list(phrases)).float()
        return model.encode_text(list(phrases)).float().cpu()


def prepare(model: Any, images: Any) -> Any:
    """The method's own checks and resize of ``[B, C, H, W]`` images in [0, 1] -> the graph's image input."""
    if model.name == "bridge":
        model.check_images(images)
        return model._prepare(images, 1.0).contiguous()
    return model.prepare_images(images).float().contiguous()


def _load_source(source: str | Path, image_size: int | None) -> Any:
    """A :class:`Predictor` for a method name or a checkpoint; ``image_size`` sets bridge's long side."""
    from weakground.engine.inference import _is_path, load

    if _is_path(source):
        if not Path(source).is_file():
            raise WeakgroundError(f"{source}: no such checkpoint file")
        predictor = load(source, command="export")
        size = predictor.model.input_size
        if image_size is not None and size is not None and image_size != size:
            raise WeakgroundError(f"{source}: the checkpoint reads {size}-px squares (data.image_size); "
                                  f"--image-size {image_size} would change what it learned on")
        return predictor
    overrides = [f"method.params.image_size={image_size}"] if image_size is not None and source == "bridge" else []
    return load(str(source), overrides=overrides, command="export")


def _example_image(model: Any, image_size: int | None) -> Any:
    import torch

    side = image_size or getattr(model.config, "image_size", None) or model.input_size or 224
    # A 4:3 landscape photo at the working size (its resize is the method's, outside the graph).
    return prepare(model, torch.rand(1, 3, side * 3 // 4, side, generator=torch.Generator().manual_seed(0)))


def _check_writable(out: Path) -> None:
    folder = out.parent if str(out.parent) else Path(".")
    if not folder.is_dir():
        raise WeakgroundError(f"{out}: the folder {folder} does not exist")
    probe = folder / f".{out.name}.probe"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise WeakgroundError(f"{out}: cannot write in {folder} ({exc.strerror or exc})") from None


def _sidecar(predictor: Any, image: Any, k: int) -> dict[str, Any]:
    from weakground.version import __version__

    model = predictor.model
    side = int(model.config.image_size) if model.name == "bridge" else model.input_size
    return {
        "format": SIDECAR_FORMAT, "weakground_version": __version__, "method": model.name,
        "source": predictor.source, "opset": OPSET,
        "image_size": side,
        "image_resize": ("long side resized to image_size, both sides rounded to multiples of 32 (bilinear)"
                         if model.name == "bridge" else
                         "resized to an image_size square (bilinear, antialiased)" if side else "as given"),
        "inputs": {
            "images": {"shape": ["batch", 3, "height", "width"], "dtype": "float32",
                       "description": "RGB in [0, 1] after the method's resize (weakground.export.prepare)",
                       "example_shape": list(image.shape)},
            "phrases": {"shape": ["phrases", k], "dtype": "float32", "description": EXPORTABLE[model.name]},
        },
        "outputs": {"maps": {"shape": ["batch", "phrases", "h", "w"], "dtype": "float32",
                             "description": "Predictor.heatmaps' maps (before the face prior for bridge's "
                                            "head-part phrases, which weakground.export.OnnxGrounder adds)"}},
        "box_threshold": predictor.box_threshold,
    }


def export_onnx(source: str | Path = "bridge", out: str | Path = "model.onnx", image_size: int | None = None
                ) -> dict[str, Any]:
    """Export ``source``'s (a method name or a checkpoint) image encoder + heatmap head to ``out``.

    Args:
        source: ``"bridge"`` or a trained ``dsve_loc`` checkpoint (others: a one-line error saying why).
        out: the ``.onnx`` file; ``out`` with ``.json`` gets the sidecar description.
        image_size: bridge's long side (``method.params.image_size``, a multiple of 32); for a checkpoint only
            the size it was trained at is allowed. It also sizes the example input traced.

    Returns:
        The sidecar's content.
    """
    import torch

    _require_onnx()
    out = Path(out)
    _check_writable(out)
    predictor = _load_source(source, image_size)
    _check_exportable(predictor.model, str(source))
    graph = _graph_module(predictor.model)
    image = _example_image(predictor.model, image_size)
    text = phrase_inputs(predictor.model, ["a dog", "the red car"])
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "phrases": {0: "phrases"},
            "maps": {0: "batch", 1: "phrases", 2: "h", 3: "w"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notes on constant folding and deprecation
        try:
            torch.onnx.export(graph, (image, text), str(out), input_names=["images", "phrases"],
                              output_names=["maps"], dynamic_axes=axes, opset_version=OPSET, dynamo=False)
        except Exception as exc:  # the exporter raises many types (an op with no ONNX form, a tracing failure)
            out.unlink(missing_ok=True)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise WeakgroundError(f"{source}: method {predictor.name!r} could not be exported to ONNX "
                                  f"({first[:200]})") from None
    meta = _sidecar(predictor, image, int(text.shape[1]))
    sidecar_path(out).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _face_prior(model: Any, images: Any, phrases: Sequence[str], maps: Any) -> Any:
    """Bridge's head-part phrases: the detected face's prior replaces the map (as :meth:`Bridge.heatmaps`)."""
    from weakground.methods import bridge

    heads = [(i, bridge.reduce_phrase(p)) for i, p in enumerate(phrases)]
    heads = [(i, r) for i, r in heads if r.kind in ("person_head", "head_wear")]
    if not heads or not model.config.face_detector:
        return maps
    for b in range(images.shape[0]):
        face = bridge.largest_face(images[b])
        if face is None:
            continue
        for i, r in heads:
            maps[b, i] = bridge._face_prior(face, bridge.HEAD_OFFSETS[r.head], tuple(maps.shape[-2:])).to(maps)
    return maps


class OnnxGrounder:
    """Heatmaps from an exported graph, run with onnxruntime; the phrase inputs and the image resize come from
    the same Python code as the PyTorch model's (rebuilt from the sidecar's ``source``).

    Attributes:
        meta: the sidecar's content.
        model: the Python model the phrase inputs come from (its image side is not run).
        session: the ``onnxruntime.InferenceSession``.
    """

    def __init__(self, path: str | Path, source: str | Path | None = None, threads: int | None = None) -> None:
        """
        Args:
            path: the ``.onnx`` file (its ``.json`` sidecar next to it).
            source: where the text side comes from (default: the sidecar's ``source``).
            threads: onnxruntime's intra-op threads (default: torch's thread count, for a like comparison).
        """
        import onnxruntime as ort
        import torch

        path = Path(path)
        try:
            self.meta = json.loads(sidecar_path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WeakgroundError(f"{sidecar_path(path)}: cannot read the export's sidecar ({exc})") from None
        size = self.meta.get("image_size") if self.meta.get("method") == "bridge" else None
        self.model = _load_source(source or self.meta["source"], size).model
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting after a run: the text side (torch) runs next on the same cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
            raise WeakgroundError(f"{path}: onnxruntime cannot load the graph ({str(exc).splitlines()[0]})") from None

    @property
    def name(self) -> str:
        return self.model.name

    def run(self, prepared: Any, phrase_inputs: Any) -> Any:
        """The bare graph: numpy/tensor ``[B, 3, H, W]`` and ``[P, K]`` -> numpy ``[B, P, h, w]``."""
        import numpy as np

        feed = {"images": np.ascontiguousarray(np.asarray(prepared, dtype=np.float32)),
                "phrases": np.ascontiguousarray(np.asarray(phrase_inputs, dtype=np.float32))}
        return self.session.run(["maps"], feed)[0]

    def heatmaps(self, images: Any, phrases: Sequence[str]) -> Any:
        """``[B, C, H, W]`` float images in [0, 1] -> ``[B, P, h, w]`` maps, as :meth:`Predictor.heatmaps`."""
        import torch

        phrases = list(phrases)
        if not phrases:
            prepare(self.model, images.float().cpu())  # the same one-line errors for bad images
            return torch.zeros(images.shape[0], 0, 1, 1)
        if self.model.name != "bridge" and self.model.shift_average > 1:
            from types import SimpleNamespace

            from weakground.methods.base import Grounder

            # The checkpoint's test-time shift averaging (eval.shift_average), over the graph's single passes.
            one_pass = SimpleNamespace(heatmaps=lambda x, p, inference=None: self._one_pass(x, p))
            return Grounder._shift_averaged(one_pass, prepare(self.model, images.float().cpu()), phrases,
                                            self.model.inference)
        return self._one_pass(images, phrases)

    def _one_pass(self, images: Any, phrases: list[str]) -> Any:
        import torch

        prepared = prepare(self.model, images.float().cpu())
        maps = torch.from_numpy(self.run(prepared.numpy(), phrase_inputs(self.model, phrases).numpy()))
        if self.model.name == "bridge":
            # What bridge does after its class-activation maps, in the same order: the word priors (colour,
            # side, another instance), then the face prior for head parts.
            maps = self.model.phrase_priors(images.float().cpu(), phrases, maps)
            maps = _face_prior(self.model, images, phrases, maps)
        return maps
