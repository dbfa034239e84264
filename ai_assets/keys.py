"""Reversible mapping between S3 object keys and Dagster partition keys.

Dagster accepts any string as a dynamic partition key, but ``...`` (the range separator),
control characters and the empty string break the CLI, the UI, ranges or Postgres. Those
characters are percent-escaped; every other key is used as it is, so users recognise it.
"""

from __future__ import annotations

import re

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"})

#: Stands for the empty key: a lone ``%`` can never come out of the escape below.
_EMPTY = "%"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _percent(char: str) -> str:
    return f"%{ord(char):02X}"


def to_partition_key(relative_key: str) -> str:
    """Escape an object key (relative to the prefix) into a safe partition key."""
    if relative_key == "":
        return _EMPTY
    escaped = relative_key.replace("%", "%25")
    escaped = _CONTROL.sub(lambda m: _percent(m.group()), escaped)
    # Keep the first two dots of every run of dots, so no run of three dots survives.
    return re.sub(r"(?<=\.\.)\.", "%2E", escaped)


def from_partition_key(partition_key: str) -> str:
    """Invert :func:`to_partition_key`."""
    if partition_key == _EMPTY:
        return ""
    return _ESCAPE.sub(lambda m: chr(int(m.group()[1:], 16)), partition_key)


def relative_key(object_key: str, prefix: str) -> str:
    """The part of an object key below the watched prefix."""
    if not object_key.startswith(prefix):
        raise ValueError(f"object key {object_key!r} is not under prefix {prefix!r}")
    return object_key[len(prefix) :]


def partition_key_for(object_key: str, prefix: str) -> str:
    return to_partition_key(relative_key(object_key, prefix))


def object_key_for(partition_key: str, prefix: str) -> str:
    return prefix + from_partition_key(partition_key)


def is_image_key(object_key: str) -> bool:
    """Whether a key names an image by its extension; ``x.jpg/`` counts, ``folder/`` does not."""
    name = object_key.rstrip("/").rsplit("/", 1)[-1].lower()
    dot = name.rfind(".")
    return dot > 0 and name[dot:] in IMAGE_EXTENSIONS
