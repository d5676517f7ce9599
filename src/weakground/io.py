"""Reading user images with clear errors instead of tracebacks."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from weakground.errors import InputError

if TYPE_CHECKING:
    import torch

# Larger images are refused before decoding: a decompression bomb (a tiny file declaring a huge canvas) would
# otherwise exhaust memory. 90 MP is about Pillow's own warning level and above any camera photo in common use.
MAX_PIXELS = 90_000_000


class ImageReadError(InputError):
    """An image that cannot be used, with ``kind`` saying why, so a caller (the web app) can pick a status code.

    ``kind`` is ``"missing"`` (no such file), ``"empty"`` (zero bytes), ``"format"`` (not an image Pillow
    recognises), ``"corrupt"`` (a recognised format that fails to decode: truncated, bad metadata) or
    ``"too_large"`` (over :data:`MAX_PIXELS`, or what Pillow calls a decompression bomb).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Read an image file as uint8 ``[H, W]`` (channels=1) or ``[H, W, 3]`` (channels=3), EXIF rotation applied.

    Conversions (so every caller sees plain 8-bit gray or RGB):

    * EXIF orientation is applied (phone photos are stored sideways with a rotation tag).
    * 16- and 32-bit integer and float images (``I;16``, ``I``, ``F``) are scaled by their maximum to 0..255.
    * Anything with transparency (RGBA, LA, PA, palette with a transparent index) is composited on white, so
      transparent areas do not turn into whatever colour happens to be stored under them.
    * CMYK, YCbCr, LAB, palette and 1-bit images go through Pillow's conversion to RGB or L.
    * Multi-frame files (GIF, TIFF) give their first frame.

    Raises:
        ImageReadError: (an :class:`InputError`) naming the file, for a missing or unreadable file, a truncated
            one, an unknown format, or one over :data:`MAX_PIXELS` (checked from the header, before decoding).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: image file not found", "missing")
    return _decode(path, str(path), channels)[0]


def read_image_bytes(data: bytes, name: str = "upload", channels: int = 3) -> np.ndarray:
    """:func:`read_image` for an image held in memory (an upload); errors name ``name`` instead of a path."""
    return read_image_bytes_bounded(data, name, channels)[0]


def read_image_bytes_bounded(data: bytes, name: str = "upload", channels: int = 3,
                             max_side: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """An upload decoded at a bounded size: (the image with its long side at most ``max_side``, the full
    image's ``(width, height)`` after EXIF rotation, the frame its coordinates are given in).

    The size is cut while decoding, before any full-size copy: JPEG decodes straight at 1/2-1/8 scale (DCT
    scaling), other formats are resized in their stored mode right after decoding, before the conversions to
    RGB that would multiply a 90 MP canvas (16-bit to float, transparency compositing, palette expansion).
    """
    import io as _io

    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes)", "empty")
    return _decode(_io.BytesIO(data), name, channels, max_side)


_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 16-bit and float: stretched to 8 bits


def pil_to_array(img: Any, channels: int = 3, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """A decoded PIL image -> uint8 ``[H, W]`` (channels=1) or ``[H, W, 3]``: 16-bit and float modes stretched
    to 8 bits, transparency composited on white, then grey or RGB (what every reader of this project sees).

    ``value_range`` is the (min, max) to stretch a wide mode by when ``img`` is a shrunk copy: the full image's,
    so a shrunk and a full decode agree (averaging lowers a lone bright pixel).
    """
    from PIL import Image

    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = _stretch_range(arr) if value_range is None else value_range
        arr = np.clip(255.0 * (arr - lo) / max(hi - lo, 1.0), 0.0, 255.0)
        img = Image.fromarray(arr.round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    return np.asarray(img, dtype=np.uint8).copy()


# Pillow's Image.reduce (a fast integer box filter used by resize's reducing_gap) handles these stored modes only.
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr", "PA", "La", "RGBa")
_EXIF_ORIENTATION = 0x0112  # orientations 5-8 turn the image by 90 degrees: width and height swap
# What ImageOps.exif_transpose does per orientation, as Image.Transpose values (PIL is imported lazily):
# 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90.
_EXIF_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}


def _shrink(img: Any, max_side: int) -> tuple[Any, tuple[float, float] | None]:
    """``img`` decoded and resized (antialiased) so its long side is at most ``max_side``, in its stored mode,
    with the full image's stretch range for 16-bit and float modes (None for the others)."""
    from PIL import Image

    scale = max_side / max(img.size)
    size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
    if img.format == "JPEG":
        img.draft(img.mode, size)  # decode at the smallest DCT scale still >= size
    img.load()
    value_range = None
    if img.mode in _WIDE_MODES:
        low, high = img.getextrema()  # no copy of the canvas; NaN or Inf values need the array's view of them
        if not (np.isfinite(low) and np.isfinite(high)):
            low, high = _stretch_range(np.nan_to_num(np.asarray(img, dtype=np.float32), posinf=0.0, neginf=0.0))
        value_range = (min(float(low), 0.0), float(high))
    if max(img.size) <= max_side:
        return img, value_range
    if img.mode in ("P", "1"):  # palette indices and bits cannot be averaged: expand them first
        img = img.convert("RGBA" if "transparency" in img.info else ("RGB" if img.mode == "P" else "L"))
    return img.resize(size, Image.BILINEAR, reducing_gap=3.0 if img.mode in _REDUCIBLE_MODES else None), value_range


def _stretch_range(arr: np.ndarray) -> tuple[float, float]:
    """The (low, high) a wide-mode image is stretched by: zero stays black unless values go below it."""
    return min(float(arr.min()), 0.0), float(arr.max())


def _decode(source: Any, label: str, channels: int, max_side: int | None = None
            ) -> tuple[np.ndarray, tuple[int, int]]:
    from PIL import Image, ImageOps, UnidentifiedImageError

    if channels not in (1, 3):
        raise InputError(f"{label}: cannot read an image with {channels} channels (1 or 3 supported)")
    try:
        with warnings.catch_warnings():
            # Pillow warns from ~89 MP on; this function enforces its own limit just below with a one-line error,
            # and a warning printed before that line would break the CLI's one-line contract.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(source)
        with img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageReadError(f"{label}: image is {img.width}x{img.height} "
                                     f"({img.width * img.height / 1e6:.0f} MP), above the "
                                     f"{MAX_PIXELS / 1e6:.0f} MP limit", "too_large")
            stored = img.size  # before JPEG's draft shrinks it; TIFF reports it already turned upright
            if max_side is not None and max(img.size) > max_side:
                small, value_range = _shrink(img, max_side)
                # Read after decoding: Pillow turns TIFFs upright itself while loading and then drops the tag.
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
                turn = _EXIF_TRANSPOSE.get(orientation)
                frame = stored[::-1] if orientation in (5, 6, 7, 8) else stored
                return pil_to_array(small.transpose(turn) if turn is not None else small, channels,
                                    value_range), frame
            img.load()  # decode now, so a truncated file fails here with the decoder's message
            upright = ImageOps.exif_transpose(img)
            return pil_to_array(upright, channels), upright.size
    except InputError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(f"{label}: refused as a possible decompression bomb ({exc})", "too_large") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{label}: cannot read image (not an image format Pillow recognises)",
                             "format") from None
    except (OSError, SyntaxError, ValueError, EOFError, KeyError, TypeError, struct.error) as exc:
        # KeyError/TypeError/struct.error: what Pillow's EXIF and TIFF parsers raise on corrupt metadata.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"{label}: cannot read image ({reason})", "corrupt") from None


def image_to_tensor(image: np.ndarray) -> "torch.Tensor":
    """``[H, W]`` or ``[H, W, 3]`` uint8 -> ``[1, 1|3, H, W]`` float in ``[0, 1]`` (imports torch lazily)."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(image)).float().div(255.0)
    return tensor[None, None] if image.ndim == 2 else tensor.permute(2, 0, 1)[None]
