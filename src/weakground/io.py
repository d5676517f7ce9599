"""Reading user images with clear errors instead of tracebacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from weakground.errors import InputError

MAX_PIXELS = 50_000_000  # larger images are refused: decoding them could exhaust memory


def read_image(path: Path, channels: int = 3) -> np.ndarray:
    """Read an image file as uint8 ``[H, W]`` (channels=1) or ``[H, W, 3]`` (channels=3), EXIF rotation applied.

    Any mode (palette, 16-bit, CMYK, RGBA, grayscale) is converted; an unreadable or truncated file, or one
    over :data:`MAX_PIXELS`, is an :class:`InputError` naming the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: image file not found")
    if channels not in (1, 3):
        raise InputError(f"{path}: cannot read an image with {channels} channels (1 or 3 supported)")
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"{path}: image is {img.width}x{img.height}, above the {MAX_PIXELS:,}-pixel limit")
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                arr = (255.0 * arr / max(arr.max(), 1.0)).astype(np.uint8)
                img = Image.fromarray(arr)
            img = img.convert("L" if channels == 1 else "RGB")
            return np.asarray(img, dtype=np.uint8).copy()
    except InputError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot read image ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
