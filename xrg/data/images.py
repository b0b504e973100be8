"""Reading and writing single-channel radiographs as PNG/JPEG, with validation.

Arrays are float32 in [0, 1], shape (H, W), row 0 at the top of the displayed image.
Files are 8-bit greyscale PNG. Reading refuses what a user would not want silently
converted: unreadable or truncated files, colour images whose channels differ, and
(when asked) images of the wrong size; every refusal is an :class:`ImageError` naming the file.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from xrg.errors import ImageError
from xrg.io import atomic_write_bytes

#: Largest image read, in pixels (PIL's own decompression-bomb threshold; radiographs are < 30M).
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 2:
        raise ImageError(f"expected a 2-D greyscale image, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise ImageError("image has NaN or infinite pixels")
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    """A float image in [0, 1] encoded as an 8-bit greyscale PNG."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a float image in [0, 1] as an 8-bit greyscale PNG, atomically."""
    return atomic_write_bytes(path, png_bytes(image))


def load_grayscale(path: str | os.PathLike, expected_size: int | None = None) -> np.ndarray:
    """Read a greyscale radiograph as float32 in [0, 1].

    Accepts 8-bit and 16-bit greyscale, and RGB/RGBA whose colour channels are equal (a grey
    image saved as colour). ``expected_size`` checks a square size.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image {path} does not exist")
    try:
        with warnings.catch_warnings():  # PIL warns about large images; they are refused just below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            if img.width * img.height > MAX_PIXELS:
                raise ImageError(
                    f"image {path} is {img.width}x{img.height} pixels, more than the {MAX_PIXELS} read; "
                    "refused (a radiograph this large is damaged or a decompression bomb)"
                )
            img.load()
            if img.mode in ("P", "LA", "PA"):
                img = img.convert("RGBA" if "A" in img.mode else "RGB")
            mode = img.mode
            array = np.asarray(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image {path} is refused as a possible decompression bomb: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"image {path} is unreadable or corrupted: {exc}") from exc
    if mode == "L":
        image = array.astype(np.float32) / 255.0
    elif mode in ("I;16", "I;16B", "I;16L", "I"):
        if array.size and (int(array.min()) < 0 or int(array.max()) > 65535):
            raise ImageError(
                f"image {path} has pixel values {int(array.min())}..{int(array.max())} outside the 16-bit range 0..65535"
            )
        array = array.astype(np.float32)
        maximum = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        image = array / maximum
    elif mode in ("RGB", "RGBA"):
        rgb = array[..., :3].astype(np.int16)
        if np.abs(rgb - rgb[..., :1]).max() > 2:
            raise ImageError(f"image {path} is a colour image (mode {mode}); a greyscale radiograph was expected")
        image = rgb[..., 0].astype(np.float32) / 255.0
    else:
        raise ImageError(f"image {path} has unsupported mode {mode!r}; expected greyscale (L or I;16) or grey RGB")
    if image.ndim != 2 or min(image.shape) < 8:
        raise ImageError(f"image {path} has unusable shape {image.shape}")
    if expected_size is not None and image.shape != (expected_size, expected_size):
        raise ImageError(f"image {path} is {image.shape[1]}x{image.shape[0]}, expected {expected_size}x{expected_size}")
    return image


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Resize to ``size`` x ``size`` with antialiasing (area-like for downsampling)."""
    if image.shape == (size, size):
        return image.astype(np.float32, copy=False)
    pil = Image.fromarray(np.asarray(image, dtype=np.float32), mode="F")
    return np.asarray(
        pil.resize(
            (size, size), resample=Image.Resampling.BOX if size < min(image.shape) else Image.Resampling.BICUBIC
        ),
        dtype=np.float32,
    ).clip(0, 1)
