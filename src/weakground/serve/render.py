"""PNG pictures for the web API: coloured heatmaps, overlays and the image as the model read it.

Pure numpy + Pillow (no matplotlib), so a request pays only for the encoding. Everything returned is base64 PNG,
scaled so its long side is at most ``max_side`` pixels; coordinates in the JSON stay in the original image's
pixels, so a client scales them by ``png_width / image_width``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

HEATMAP_ALPHA = 0.45  # the same blend as the CLI's overlay figure


def jet(values: np.ndarray) -> np.ndarray:
    """Matplotlib's ``jet`` colour map in closed form: ``[...]`` floats in [0, 1] -> ``[..., 3]`` uint8.

    Each channel is a clipped tent, ``clip(1.5 - |4v - c|, 0, 1)`` with ``c`` = 3 (red), 2 (green), 1 (blue).
    """
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    return (np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0) * 255.0).round().astype(np.uint8)


def _fit(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(width, height) scaled down (never up) so the long side is at most ``max_side``."""
    w, h = size
    scale = min(1.0, max_side / max(w, h))
    return max(1, round(w * scale)), max(1, round(h * scale))


def png_base64(img: Image.Image) -> str:
    """Base64 PNG. zlib level 1: the same pixels as any level, at about 2/3 of level 3's encoding time for
    ~15% more bytes (a server on a shared CPU is short of CPU, not of bandwidth to its clients)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=1)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def image_png(image: np.ndarray, max_side: int = 1024) -> str:
    """The decoded image (``[H, W]`` or ``[H, W, 3]`` uint8: EXIF-rotated, 8-bit, RGB or gray) as base64 PNG."""
    img = Image.fromarray(image)
    return png_base64(img.resize(_fit(img.size, max_side), Image.BILINEAR))


def heatmap_png(heatmap: np.ndarray, max_side: int = 640) -> str:
    """A ``[H, W]`` non-negative map, divided by its peak and coloured with :func:`jet`, as opaque base64 PNG."""
    hm = np.asarray(heatmap, dtype=np.float32)
    hm = hm / max(float(hm.max()), 1e-6)
    img = Image.fromarray(jet(hm))
    return png_base64(img.resize(_fit(img.size, max_side), Image.BILINEAR))


def overlay_png(image: np.ndarray, heatmap: np.ndarray, point: tuple[int, int],
                boxes: Sequence[Sequence[float]], max_side: int = 1024) -> str:
    """The image with the heatmap blended on top, the boxes (white) and the peak point (a white cross)."""
    base = Image.fromarray(image).convert("RGB")
    size = _fit(base.size, max_side)
    sx, sy = size[0] / base.width, size[1] / base.height
    hm = np.asarray(heatmap, dtype=np.float32)
    colour = Image.fromarray(jet(hm / max(float(hm.max()), 1e-6))).resize(size, Image.BILINEAR)
    out = Image.blend(base.resize(size, Image.BILINEAR), colour, HEATMAP_ALPHA)
    draw = ImageDraw.Draw(out)
    width = max(2, round(max(size) / 300))
    for x1, y1, x2, y2 in boxes:
        draw.rectangle([x1 * sx, y1 * sy, x2 * sx - 1, y2 * sy - 1], outline=(255, 255, 255), width=width)
    # The point is a pixel index; its centre is at +0.5.
    px, py = (point[0] + 0.5) * sx, (point[1] + 0.5) * sy
    arm = 4 * width
    for dx, dy in ((arm, arm), (arm, -arm)):
        draw.line([px - dx, py - dy, px + dx, py + dy], fill=(0, 0, 0), width=width + 2)
        draw.line([px - dx, py - dy, px + dx, py + dy], fill=(255, 255, 255), width=width)
    return png_base64(out)
