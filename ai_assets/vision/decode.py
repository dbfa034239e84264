"""Object bytes → upright RGB pixels, with the size limits checked before decoding.

Pure: Pillow, numpy and libjpeg-turbo (simplejpeg). Every way an image can be unusable ends as
an ``ImageError`` with a ``kind``, which runs turn into error rows and the model service into
4xx answers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import struct
from collections.abc import Iterator

import numpy as np
import simplejpeg
from PIL import ExifTags, Image, UnidentifiedImageError

from ai_assets.settings import DEFAULT_MAX_IMAGE_PIXELS

#: Longer/shorter side beyond which only the central part is kept: a 10000×3 strip would
#: otherwise be resized to ~850k×256 pixels. Centre-crop models never see beyond it anyway.
MAX_ASPECT_RATIO = 8

#: EXIF orientation → the view of the stored pixels that shows them upright, as Pillow's
#: ``ImageOps.exif_transpose`` (flips and transposes of (H, W, 3); checked against it in tests).
_UPRIGHT = {
    2: lambda p: p[:, ::-1],
    3: lambda p: p[::-1, ::-1],
    4: lambda p: p[::-1],
    5: lambda p: p.transpose(1, 0, 2),
    6: lambda p: p.transpose(1, 0, 2)[:, ::-1],
    7: lambda p: p.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda p: p.transpose(1, 0, 2)[::-1],
}


class ImageError(ValueError):
    """An object that cannot be classified; it becomes an error row, never a failed batch.

    ``kind`` names the reason for machines (the model service's error bodies and metrics).
    """

    def __init__(self, message: str, kind: str = "not_an_image") -> None:
        super().__init__(message)
        self.kind = kind


@dataclasses.dataclass(frozen=True)
class EncodedJpeg:
    """A JPEG whose header passed every check, left encoded for a batched decode on the device."""

    data: bytes
    width: int
    height: int


def decode_image(
    data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, min_side: int = 0
) -> np.ndarray:
    """Decode bytes into upright RGB pixels, (height, width, 3) uint8, refusing oversize images
    before decoding.

    With ``min_side``, a JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, the
    scale Pillow's draft mode picks) while both sides stay at least ``min_side`` pixels: a
    4000×3000 photo bound for a 256 px model input decodes ~10× faster.
    """
    with _image_errors():
        pixels = _plain_jpeg(data, max_pixels, min_side)
        if pixels is not None:
            return pixels
        return _decoded(_open(data, max_pixels), data, min_side)


def decode_or_keep_jpeg(
    data: bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, min_side: int = 0
) -> np.ndarray | EncodedJpeg:
    """``decode_image``'s pixels, or a plain JPEG left encoded, whose plain decode is exactly
    those pixels (for a batched decode on the device); one header read either way.

    Plain: baseline YCbCr, upright, within the aspect ratio, and ending with its end-of-image
    marker (a truncated file must stay an error row, and nvJPEG does not refuse one).
    """
    with _image_errors():
        image = _open(data, max_pixels)
        width, height = image.size
        if (
            image.format == "JPEG"
            and image.mode == "RGB"
            and not image.info.get("progressive")
            and max(width, height) <= MAX_ASPECT_RATIO * min(width, height)
            and data.endswith(b"\xff\xd9")
            and image.getexif().get(ExifTags.Base.Orientation, 1) == 1
        ):
            return EncodedJpeg(data, width, height)
        return _decoded(image, data, min_side)


def _decoded(image: Image.Image, data: bytes, min_side: int) -> np.ndarray:
    """The opened image's upright RGB pixels, at the smallest JPEG scale ``min_side`` allows."""
    if min_side:
        image.draft(image.mode, (min_side, min_side))  # a no-op unless JPEG; sets the size
    pixels = _turbo_jpeg(data, image)
    if pixels is None:
        image.load()
        pixels = np.array(_to_rgb(image))
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return _limit_aspect_ratio(_UPRIGHT.get(orientation, lambda p: p)(pixels))


def _plain_jpeg(data: bytes, max_pixels: int, min_side: int) -> np.ndarray | None:
    """A JPEG that nothing in Pillow would change, decoded without Pillow; None for any other.

    Pillow's JPEG header parser is Python: ~20 µs per image under the GIL, against ~4 µs for
    walking the segments here and libjpeg-turbo reading the header. Plain: no APP1 segment
    (EXIF or XMP, where Pillow finds the orientation), no MPF (several pictures), YCbCr, RGB or
    grey, within the pixel limit and decoded without a warning. The rest, errors included, is
    decided by Pillow's path, which gives the same pixels for a plain one (tested).
    """
    if not _plain_segments(data):
        return None
    try:
        rows, columns, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return None
    width, height = int(columns), int(rows)
    if colorspace not in ("YCbCr", "RGB", "Gray") or width * height > max_pixels:
        return None
    scale = _draft_scale(width, height, min_side)
    pixels = _turbo_decode(data, -(-width // scale), -(-height // scale))
    return None if pixels is None else _limit_aspect_ratio(pixels)


def _plain_segments(data: bytes) -> bool:
    """Whether the JPEG's segments up to its first scan hold no APP1 and no MPF, walked as
    Pillow walks them; False for anything it would read differently (junk between them)."""
    if not data.startswith(b"\xff\xd8\xff"):
        return False
    at, end = 2, len(data)
    while at + 4 <= end:
        if data[at] != 0xFF:
            return False
        marker = data[at + 1]
        if marker == 0xDA:  # start of scan: Pillow reads no further
            return True
        if (
            marker < 0xC0
            or marker == 0xE1
            or (marker == 0xE2 and data[at + 4 : at + 8] == b"MPF\x00")
        ):
            return False  # junk Pillow reads its own way, or a segment it acts on
        if marker == 0xFF or 0xD0 <= marker <= 0xD9:  # a fill byte, a marker without length
            at += 1 if marker == 0xFF else 2
            continue
        at += 2 + int.from_bytes(data[at + 2 : at + 4], "big")
    return False


def _draft_scale(width: int, height: int, min_side: int) -> int:
    """The JPEG draft scale's divisor Pillow picks (1, 2, 4 or 8) to keep both sides at least
    ``min_side``; 1 without ``min_side``."""
    if not min_side:
        return 1
    fits = min(width // min_side, height // min_side)
    return next((scale for scale in (8, 4, 2) if fits >= scale), 1)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image's header, read and checked against the pixel limit; its first frame."""
    if not data:
        raise ImageError("empty object (0 bytes)", "empty")
    _own_pixel_limit()
    image = Image.open(io.BytesIO(data))  # reads the header only
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"image is {width}x{height} = {width * height:,} pixels, "
            f"above the limit of {max_pixels:,} (AI_ASSETS_MAX_IMAGE_PIXELS)",
            "too_many_pixels",
        )
    image.seek(0)  # first frame of animations
    return image


@contextlib.contextmanager
def _image_errors() -> Iterator[None]:
    """Whatever Pillow or a decoder raises over bad bytes, as an ImageError."""
    try:
        yield
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as exc:
        raise ImageError(f"cannot decode image: {exc}", "undecodable") from None


def _turbo_jpeg(data: bytes, image: Image.Image) -> np.ndarray | None:
    """An opened YCbCr or grey JPEG's pixels from libjpeg-turbo (``_turbo_decode``) at the size
    Pillow's draft set; None for anything else."""
    if image.format != "JPEG" or image.mode not in ("RGB", "L"):
        return None
    width, height = image.size  # after draft(): the scaled size
    return _turbo_decode(data, width, height)


def _turbo_decode(data: bytes, width: int, height: int) -> np.ndarray | None:
    """A JPEG decoded by libjpeg-turbo straight into RGB pixels at the DCT scale that gives
    ``width`` × ``height``, off the GIL.

    The same pixels as Pillow's decode (same library, same IDCT and upsampling) at ~half its
    CPU: no copy through Pillow's 4-byte pixels. None for a JPEG libjpeg-turbo warns about:
    Pillow decides those (it tolerates some warnings, and its errors say what is wrong).
    """
    try:
        return simplejpeg.decode_jpeg(data, "RGB", min_width=width, min_height=height)
    except ValueError:
        return None


def _limit_aspect_ratio(pixels: np.ndarray) -> np.ndarray:
    """Keep the central part of an extreme strip; always returns C-contiguous pixels."""
    height, width = pixels.shape[:2]
    short = min(width, height)
    keep_w, keep_h = min(width, MAX_ASPECT_RATIO * short), min(height, MAX_ASPECT_RATIO * short)
    left, top = (width - keep_w) // 2, (height - keep_h) // 2
    return np.ascontiguousarray(pixels[top : top + keep_h, left : left + keep_w])


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; alpha is composited on white, 16-bit scaled to 8-bit."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else max(float(array.max()), 1.0)
        image = Image.fromarray((array.clip(0, top) * (255.0 / top)).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image if image.mode == "RGB" else image.convert("RGB")


@functools.cache
def _own_pixel_limit() -> None:
    """Switch Pillow's global bomb limit off, once, at the first decode (never at import).

    ``decode_image`` enforces AI_ASSETS_MAX_IMAGE_PIXELS itself, from the header, before
    decoding; Pillow's own limit would refuse (or warn about) images that the setting allows.
    """
    Image.MAX_IMAGE_PIXELS = None
