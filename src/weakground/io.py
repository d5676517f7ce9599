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
    return _decode(path, str(path), channels)


def read_image_bytes(data: bytes, name: str = "upload", channels: int = 3) -> np.ndarray:
    """:func:`read_image` for an image held in memory (an upload); errors name ``name`` instead of a path."""
    import io as _io

    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes)", "empty")
    return _decode(_io.BytesIO(data), name, channels)


def pil_to_array(img: Any, channels: int = 3) -> np.ndarray:
    """A decoded PIL image -> uint8 ``[H, W]`` (channels=1) or ``[H, W, 3]``: 16-bit and float modes stretched
    to 8 bits, transparency composited on white, then grey or RGB (what every reader of this project sees)."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
        arr = 255.0 * (arr - min(arr.min(), 0.0)) / max(arr.max() - min(arr.min(), 0.0), 1.0)
        img = Image.fromarray(arr.round().astype(np.uint8))
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    return np.asarray(img, dtype=np.uint8).copy()


def _decode(source: Any, label: str, channels: int) -> np.ndarray:
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
            img.load()  # decode now, so a truncated file fails here with the decoder's message
            return pil_to_array(ImageOps.exif_transpose(img), channels)
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
