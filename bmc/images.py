"""Opening one user-supplied image safely: the checks and conversions every path shares.

Training files, uploads in the app and the files of ``bmc count`` all pass through
:func:`open_image`, so they get the same limits (size on disk, pixels before decoding, tiny
images, multi-frame files) and the same conversions to 8-bit RGB. The module needs only Pillow
and NumPy: serving code imports it without the training stack (``datasets``, ``evaluate``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MAX_FILE_BYTES = 10 * 1024 * 1024
"""Uploads and training files above this are refused: a single-cell crop is a few tens of kB."""
MAX_PIXELS = 40_000_000
"""Refuse images larger than this *before* decoding them (decompression-bomb guard)."""
MIN_SIDE = 16
"""A cell image smaller than this on either side carries no usable morphology."""
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}


class ImageError(ValueError):
    """An input that is not a usable cell image; the message names the problem for the user."""


@dataclass
class SkippedFile:
    """A file left out of a data set, with the reason a person can act on."""

    source: str
    reason: str


def open_image(data: str | Path | bytes | Image.Image, name: str = "image") -> Image.Image:
    """Decode one image to 8-bit RGB, or raise :class:`ImageError` saying what is wrong with it.

    Used for training files and uploads alike so both get the same checks: size on disk, header,
    pixel count (checked before the pixels are decoded), truncation, tiny images; 16-bit, CMYK,
    palette, greyscale and transparent images are converted rather than refused (the returned
    image's ``info["bmc_converted"]`` then says from what, so a user can be told); multi-page
    TIFFs and animated GIFs are refused, because which frame is "the cell" is the user's call.
    """
    if isinstance(data, Image.Image):
        img = data
    else:
        if isinstance(data, (str, Path)):
            path = Path(data)
            if not path.is_file():
                raise ImageError(f"{name}: file not found")
            size = path.stat().st_size
            raw: bytes | None = None
        else:
            raw, size = data, len(data)
        if size == 0:
            raise ImageError(f"{name}: the file is empty (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise ImageError(f"{name}: the file is {size / 1e6:.1f} MB; the limit is {MAX_FILE_BYTES / 1e6:.0f} MB")
        try:
            img = Image.open(io.BytesIO(raw) if raw is not None else path)
        except Image.DecompressionBombError:
            raise ImageError(f"{name}: the image is too large to decode safely (limit {MAX_PIXELS // 1_000_000} Mpx)") from None
        except UnidentifiedImageError:
            raise ImageError(f"{name}: not an image file (or an image format that cannot be read)") from None
        except ValueError as exc:  # PIL: "Decompressed Data Too Large" from a metadata (text) chunk
            raise ImageError(
                f"{name}: the file's metadata is too large to read safely ({exc}); re-save the image without embedded text"
            ) from None
        except OSError as exc:
            raise ImageError(f"{name}: the image data is damaged or truncated ({exc})") from None
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{name}: {w}×{h} px is too large (limit {MAX_PIXELS // 1_000_000} Mpx); crop single cells first")
    if min(w, h) < MIN_SIDE:
        raise ImageError(f"{name}: {w}×{h} px is too small to show a cell (minimum {MIN_SIDE} px per side)")
    frames = int(getattr(img, "n_frames", 1) or 1)
    if frames > 1:
        kind = {"TIFF": "a multi-page TIFF", "GIF": "an animated GIF", "PNG": "an animated PNG"}.get(
            img.format or "", "a multi-frame image"
        )
        raise ImageError(
            f"{name}: {kind} with {frames} frames; bmc classifies one cell per image — save the frame you mean as a single image"
        )
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"{name}: the image data is damaged or truncated ({exc})") from None
    return _to_rgb(img)


CONVERSIONS = {
    "I;16": "16-bit greyscale, scaled to 8 bits",
    "I;16B": "16-bit greyscale, scaled to 8 bits",
    "I;16L": "16-bit greyscale, scaled to 8 bits",
    "I": "32-bit greyscale, scaled to 8 bits",
    "CMYK": "CMYK (print colours)",
    "RGBA": "RGB with transparency, composited on white",
    "LA": "greyscale with transparency, composited on white",
    "P": "a palette (indexed-colour) image",
    "PA": "a palette image with transparency",
    "L": "greyscale (no stain colour: expect poor results)",
    "1": "black-and-white (no stain colour: expect poor results)",
    "YCbCr": "YCbCr",
    "LAB": "Lab",
    "HSV": "HSV",
}
"""What a non-RGB input was, in words, for the note shown beside its prediction."""


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited onto white (slide background)."""
    mode = img.mode
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() or 1.0
        img = Image.fromarray((arr / peak * 255).clip(0, 255).astype("uint8"))
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    rgb = img.convert("RGB")
    if mode != "RGB":
        rgb.info["bmc_converted"] = CONVERSIONS.get(mode, mode)
    return rgb


def slide_colour(pixels: np.ndarray) -> np.ndarray:
    """The median colour of an H×W×C image's outermost rows and columns: the slide (glass and plasma) around a
    centred cell. The one rule for "empty slide" wherever one is needed (zoom-out's canvas, an attribution baseline)."""
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    return np.median(border, axis=0)
