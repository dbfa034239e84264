"""A corpus of hostile objects and keys: what a public bucket may receive."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import struct
import zlib

import numpy as np
from PIL import Image

from ai_assets_dev.samples import encode


@dataclasses.dataclass(frozen=True)
class Case:
    key: str
    data: bytes
    status: str  # expected row status
    error: str = ""  # expected fragment of the error text


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def decompression_bomb(side: int = 30_000) -> bytes:
    """A valid-looking PNG header claiming side×side pixels, in a few hundred bytes."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * (side + 1) * 4))
        + _png_chunk(b"IEND", b"")
    )


def exif_rotated(image: Image.Image) -> bytes:
    """The photo stored sideways, with the EXIF orientation that shows it upright."""
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90° clockwise
    buffer = io.BytesIO()
    image.transpose(Image.Transpose.ROTATE_90).save(buffer, "JPEG", quality=90, exif=exif)
    return buffer.getvalue()


def animated_gif(photo: Image.Image) -> bytes:
    frames = [photo.resize((128, 96)), Image.new("RGB", (128, 96), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100)
    return buffer.getvalue()


def hostile_objects(photos: dict[str, Image.Image], max_bytes: int) -> list[Case]:
    chelsea, coffee = photos["chelsea"], photos["coffee"]
    jpeg = encode(coffee)
    rgba = coffee.convert("RGBA")
    rgba.putalpha(128)
    grey16 = Image.fromarray(np.asarray(coffee.convert("L")).astype(np.uint16) * 257)
    rng = random.Random(0)
    return [
        Case("hostile/zero-bytes.jpg", b"", "error", "empty object"),
        Case("hostile/truncated.jpg", jpeg[: len(jpeg) // 3], "error", "cannot decode"),
        Case("hostile/random.jpg", rng.randbytes(4096), "error", "not a recognised image format"),
        Case(
            "hostile/text.png", b"I am a text file, honestly.\n" * 20, "error", "not a recognised"
        ),
        Case("hostile/bomb.png", decompression_bomb(), "error", "AI_ASSETS_MAX_IMAGE_PIXELS"),
        Case(
            "hostile/too-big.jpg", os.urandom(max_bytes + 1), "error", "AI_ASSETS_MAX_IMAGE_BYTES"
        ),
        Case("formats/alpha.png", encode(rgba, "PNG"), "ok"),
        Case("formats/palette.png", encode(coffee.convert("P"), "PNG"), "ok"),
        Case("formats/grey16.png", encode(grey16, "PNG"), "ok"),
        Case("formats/cmyk.jpg", encode(coffee.convert("CMYK")), "ok"),
        Case("formats/animated.gif", animated_gif(coffee), "ok"),
        Case("formats/photo.webp", encode(coffee, "WEBP"), "ok"),
        Case("formats/photo.tiff", encode(coffee, "TIFF"), "ok"),
        Case("formats/one-pixel.png", encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), "ok"),
        Case(
            "formats/strip.png", encode(Image.new("RGB", (10_000, 3), (200, 10, 10)), "PNG"), "ok"
        ),
        Case("formats/exif-rotated.jpg", exif_rotated(chelsea), "ok"),
    ]


def hostile_keys() -> list[str]:
    """Keys that break naive code: each gets a real image and must round-trip exactly.

    Keys differing only by a trailing slash are tested on moto: SeaweedFS stores ``x.jpg/`` as
    a directory and drops its bytes.
    """
    # 1,000 bytes in all; SeaweedFS (like many filesystems) caps one path segment at 255
    long_name = "/".join(["d" * 199] * 4) + "/" + "k" * (1000 - len("keys/.jpg") - 800) + ".jpg"
    return [
        "keys/a...b.jpg",
        "keys/....jpg",
        "keys/new\nline.jpg",
        "keys/tab\there.jpg",
        "keys/comma,separated.jpg",
        "keys/quotes'and\"double.jpg",
        "keys/x'; DROP TABLE image_classifications;--.jpg",
        "keys/кошка.jpg",
        "keys/🐱 cat.jpg",
        "keys/ spaces  everywhere .jpg",
        f"keys/{long_name}",
        "keys/Case.jpg",
        "keys/case.jpg",
        "keys/dir/x.jpg",
        "keys/100%25 real.jpg",
    ]
