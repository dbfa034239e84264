"""Object keys: which ones are images, and the key range a prefix spans in S3's order."""

from __future__ import annotations

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})
_MAX_CODE_POINT = 0x10FFFF
_SURROGATES = range(0xD800, 0xE000)


def is_image_key(object_key: str) -> bool:
    """Whether a key names an image by its extension; ``x.jpg/`` counts, ``folder/`` does not.

    A key with a NUL character is never one: no PostgreSQL text column can hold it.
    """
    if "\x00" in object_key:
        return False
    name = object_key.rstrip("/").rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return dot > 0 and name[dot:] in IMAGE_EXTENSIONS


def prefix_end(prefix: str) -> str | None:
    """The smallest key above every key that starts with ``prefix``; None when unbounded.

    Python compares str by code point, which is the byte order of UTF-8: S3's order.
    """
    chars = list(prefix)
    while chars:
        code = ord(chars.pop()) + 1
        if code in _SURROGATES:
            code = _SURROGATES.stop
        if code <= _MAX_CODE_POINT:
            return "".join(chars) + chr(code)
    return None
