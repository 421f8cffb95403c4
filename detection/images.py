"""Reading X-ray image files into 8-bit RGB, whatever they were saved as.

Radiographs arrive as 8-bit JPEGs, 8- or 16-bit grayscale PNGs (often with only 10-12 bits
used), and with EXIF orientation tags from phone photos of light boxes. Detectors want three
8-bit channels in display orientation; everything that cannot be read raises
:class:`ImageLoadError` with the file named, never a bare PIL exception.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# File types looked for in image folders (DICOM is recognised by content: see integrations/dicom.py).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})
# Decompression bombs are refused above this many pixels (a 4k x 4k radiograph is 16 Mpx).
MAX_PIXELS = 64_000_000


class ImageLoadError(ValueError):
    """An image file is missing, corrupt, truncated, too large or in an unsupported format."""


def load_image(source: str | Path | bytes, *, name: str | None = None) -> Image.Image:
    """Open ``source`` (a path or the file's bytes) as an 8-bit RGB image in display orientation."""
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    try:
        opened = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except FileNotFoundError as error:
        raise ImageLoadError(f"{label}: file not found") from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(f"{label}: not an image file PIL can read") from error
    except Image.DecompressionBombError as error:
        raise ImageLoadError(f"{label}: refused as a decompression bomb ({error})") from error
    except OSError as error:
        raise ImageLoadError(f"{label}: corrupt or truncated image data ({error})") from error
    with opened as image:
        if image.width * image.height > MAX_PIXELS:
            raise ImageLoadError(f"{label}: {image.width}x{image.height} exceeds the {MAX_PIXELS:,}-pixel limit")
        try:
            image.load()  # decode now, so that truncated files fail here and not in a worker
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
            raise ImageLoadError(f"{label}: corrupt or truncated image data ({error})") from error
        return to_rgb8(ImageOps.exif_transpose(image))


def to_rgb8(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB, rescaling high-bit-depth grayscale to its own range."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(rescale_to_uint8(np.asarray(image))).convert("RGB")
    if image.mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def rescale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Linearly map the used intensity range of a high-bit-depth image onto 0..255.

    The used range, not the dtype's, because 16-bit X-rays usually hold 10-12 bits of signal and
    dividing by 257 would leave them almost black.
    """
    values = pixels.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)
