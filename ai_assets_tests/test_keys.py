import pytest
from hypothesis import given
from hypothesis import strategies as st

from ai_assets.keys import (
    from_partition_key,
    is_image_key,
    object_key_for,
    partition_key_for,
    to_partition_key,
)


@given(st.text())
def test_round_trip_for_any_string(key: str) -> None:
    assert from_partition_key(to_partition_key(key)) == key


@given(st.text())
def test_escaped_keys_are_safe_for_dagster(key: str) -> None:
    escaped = to_partition_key(key)
    assert escaped != ""
    assert "..." not in escaped
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in escaped)


@given(st.text(), st.text())
def test_escape_is_injective(a: str, b: str) -> None:
    if a != b:
        assert to_partition_key(a) != to_partition_key(b)


@pytest.mark.parametrize(
    "key",
    ["cats/chelsea.jpg", "a b/ü/кот 🐱.png", "x,y'\"; DROP TABLE t;--.jpg", "..jpg", "a/../b.jpg"],
)
def test_ordinary_keys_stay_as_they_are(key: str) -> None:
    assert to_partition_key(key) == key


@pytest.mark.parametrize(
    ("key", "escaped"),
    [
        ("", "%"),
        ("a...b.jpg", "a..%2Eb.jpg"),
        ("a.....jpg", "a..%2E%2E%2Ejpg"),
        ("tab\there.jpg", "tab%09here.jpg"),
        ("line\nbreak.jpg", "line%0Abreak.jpg"),
        ("nul\x00.jpg", "nul%00.jpg"),
        ("100%.jpg", "100%25.jpg"),
        ("%2E.jpg", "%252E.jpg"),
    ],
)
def test_unsafe_characters_are_escaped(key: str, escaped: str) -> None:
    assert to_partition_key(key) == escaped
    assert from_partition_key(escaped) == key


def test_prefix_is_stripped_and_restored() -> None:
    assert partition_key_for("photos/2024/a...jpg", "photos/") == "2024/a..%2Ejpg"
    assert object_key_for("2024/a..%2Ejpg", "photos/") == "photos/2024/a...jpg"
    with pytest.raises(ValueError, match="not under prefix"):
        partition_key_for("other/a.jpg", "photos/")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("a.jpg", True),
        ("dir/B.JPEG", True),
        ("x.webp", True),
        ("notes.txt", False),
        ("folder/", False),
        ("photo.jpg/", True),
        ("photos/", False),
        (".jpg", False),
        ("noextension", False),
    ],
)
def test_image_keys_are_recognised_by_extension(key: str, expected: bool) -> None:
    assert is_image_key(key) is expected
