"""Image keys by extension; the key range of a prefix in S3's byte order."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ai_assets.s3.keys import is_image_key, prefix_end


@given(st.text(), st.text())
def test_prefix_end_bounds_exactly_the_keys_under_the_prefix(prefix: str, key: str) -> None:
    end = prefix_end(prefix)
    under = key.startswith(prefix)
    in_range = key >= prefix and (end is None or key < end)
    assert under == in_range


@given(st.text(), st.text())
def test_code_point_order_matches_utf8_bytes(a: str, b: str) -> None:
    encode = lambda s: s.encode("utf-8", "surrogatepass")  # noqa: E731
    assert (a < b) == (encode(a) < encode(b))


@pytest.mark.parametrize(
    ("prefix", "end"), [("", None), ("a/", "a0"), ("a\U0010ffff", "b"), ("\ud7ff", "\ue000")]
)
def test_prefix_end_examples(prefix: str, end: str | None) -> None:
    assert prefix_end(prefix) == end


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
        ("a.jpg.txt", False),
        ("nul\x00.jpg", False),
    ],
)
def test_image_keys_are_recognised_by_extension(key: str, expected: bool) -> None:
    assert is_image_key(key) is expected
