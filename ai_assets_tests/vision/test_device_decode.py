"""Decoding on the device: which JPEGs go there, and that their rows are the CPU path's rows.

nvJPEG itself needs a CUDA device (bench/gpu.sh runs it); here the same path runs on the CPU
with libjpeg-turbo as the batch decoder: the routing, the float resize and crop, the slots
mixed with CPU-prepared ones, and the fallback for a JPEG the batch decoder refuses.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from ai_assets.db.results import ClassificationRow
from ai_assets.s3.objects import Fetched
from ai_assets.settings import DEFAULT_DECODE_CONCURRENCY
from ai_assets.vision.decode import EncodedJpeg, ImageError, decode_image, decode_or_keep_jpeg
from ai_assets.vision.model import ImageClassifier, load_classifier
from ai_assets.vision.preprocess import ProcessorPreprocessor, reproduces_on_device
from ai_assets.vision.stream import Job, classify_objects
from ai_assets_tests.support.hostile import exif_rotated


def jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


def mid_stream_garbage(data: bytes) -> bytes:
    """A JPEG whose header is intact and whose entropy-coded data is not, ending as JPEGs end."""
    start = data.index(b"\xff\xda") + 200
    return data[:start] + bytes(range(256)) * 4 + b"\xff\xd9"


@pytest.fixture
def nvjpeg_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """Decoding "on the device" off CUDA: libjpeg-turbo in nvJPEG's place."""
    from ai_assets.vision import device_decode

    monkeypatch.setattr(device_decode, "nvjpeg_available", lambda device: True)


def test_decoding_on_the_device_needs_nvjpeg(lite0_dir: str) -> None:
    """Asked for on a machine without it (AI_ASSETS_GPU_JPEG_DECODE on a CPU node): ignored."""
    assert ImageClassifier(lite0_dir, "cpu", device_decode=True).on_device is None


def outcome(decode: Callable[..., object], data: bytes) -> object:
    """What a decoder gives for ``data``: its result, or its ImageError's message."""
    try:
        return decode(data)
    except ImageError as exc:
        return str(exc)


def test_only_plain_jpegs_are_left_for_the_device(jpegs: dict[str, bytes]) -> None:
    photo = Image.open(io.BytesIO(jpegs["chelsea"]))
    plain = decode_or_keep_jpeg(jpegs["chelsea"])
    assert plain == EncodedJpeg(jpegs["chelsea"], *photo.size)
    png = io.BytesIO()
    photo.save(png, "PNG")
    for data in (
        jpeg(photo, progressive=True),
        jpeg(photo.convert("L")),
        jpeg(photo.convert("CMYK")),
        exif_rotated(photo),  # upright only after the EXIF transpose
        jpeg(photo.resize((900, 100))),  # beyond the aspect ratio: the centre is cut out
        jpegs["chelsea"][:-2],  # truncated: no end-of-image marker
        png.getvalue(),
    ):  # not left encoded: decoded as decode_image decodes it, or refused as it refuses it
        kept, decoded = outcome(decode_or_keep_jpeg, data), outcome(decode_image, data)
        assert not isinstance(kept, EncodedJpeg)
        assert type(kept) is type(decoded)
        assert np.array_equal(kept, decoded) if isinstance(kept, np.ndarray) else kept == decoded
    for data, kind in ((b"", "empty"), (b"not an image", "not_an_image")):
        with pytest.raises(ImageError) as error:
            decode_or_keep_jpeg(data)
        assert error.value.kind == kind
    with pytest.raises(ImageError, match="above the limit") as error:
        decode_or_keep_jpeg(jpegs["chelsea"], max_pixels=1000)
    assert error.value.kind == "too_many_pixels"


def test_the_device_resize_reproduces_the_processor(lite0_dir: str) -> None:
    classifier = load_classifier(lite0_dir, "cpu")
    processor = classifier.preprocessor
    assert reproduces_on_device(processor, _image_processor(lite0_dir), "cpu")
    assert not reproduces_on_device(
        ProcessorPreprocessor(_image_processor(lite0_dir)), _image_processor(lite0_dir), "cpu"
    )


def _image_processor(model: str) -> object:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(model)


@pytest.mark.usefixtures("nvjpeg_stand_in")
def test_rows_from_the_device_path_are_the_cpu_paths_rows(
    lite0_dir: str, jpegs: dict[str, bytes]
) -> None:
    """Every kind of object in one batch: plain JPEGs among CPU-prepared images and errors."""
    photo = Image.open(io.BytesIO(jpegs["coffee"]))
    objects = {
        "chelsea.jpg": jpegs["chelsea"],
        "broken.jpg": b"not an image",
        "rotated.jpg": exif_rotated(photo),
        "coffee.jpg": jpegs["coffee"],
        "garbage.jpg": mid_stream_garbage(jpegs["chelsea"]),
        "grey.jpg": jpeg(photo.convert("L")),
        "truncated.jpg": jpegs["coffee"][:3000],
        "china.jpg": jpegs["china"],
    }

    def rows(classifier: ImageClassifier, batch_size: int) -> dict[str, ClassificationRow]:
        return {row.s3_key: row for row in _rows(classifier, objects, batch_size)}

    def scores(row: ClassificationRow) -> dict[str, float]:
        return {label["label"]: label["score"] for label in row.top_k or []}

    device = ImageClassifier(lite0_dir, "cpu", device_decode=True)
    assert device.on_device is device.preprocessor
    on_cpu = ImageClassifier(lite0_dir, "cpu", jpeg_draft=False, device_decode=False)
    assert on_cpu.on_device is None
    together, alone, cpu = rows(device, 8), rows(device, 1), rows(on_cpu, 8)
    for key in objects:
        assert (together[key].status, together[key].error) == (cpu[key].status, cpu[key].error)
        assert scores(together[key]) == pytest.approx(scores(alone[key]), abs=1e-4)
        # the CPU path's pixels differ by rounding (a level): a close second may swap places
        assert together[key].label in scores(cpu[key]) or together[key].label is None
        assert (together[key].score or 0) == pytest.approx(cpu[key].score or 0, abs=0.02)
    statuses = {key: row.status for key, row in together.items()}
    assert [key for key, status in statuses.items() if status == "error"] == [
        "broken.jpg",
        "truncated.jpg",
    ] + (["garbage.jpg"] if statuses["garbage.jpg"] == "error" else [])


@pytest.mark.usefixtures("nvjpeg_stand_in")
def test_a_jpeg_the_batch_decoder_refuses_is_decided_by_the_cpu_path(
    lite0_dir: str, jpegs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One refusal costs its own slot: the CPU path labels it, or says why it cannot."""
    from ai_assets.vision import device_decode

    refused = {jpegs["coffee"], mid_stream_garbage(jpegs["chelsea"])}
    decode = device_decode.decode_jpegs

    def refusing(batch: list[EncodedJpeg], device: str) -> list[object]:
        decoded = decode(batch, device)
        return [
            None if jpeg.data in refused else image
            for jpeg, image in zip(batch, decoded, strict=True)
        ]

    monkeypatch.setattr(device_decode, "decode_jpegs", refusing)
    classifier = ImageClassifier(lite0_dir, "cpu", device_decode=True)
    names = ("chelsea", "coffee", "garbage")
    objects = {
        **{name: jpegs[name] for name in names[:2]},
        "garbage": mid_stream_garbage(jpegs["chelsea"]),
    }
    batch = classifier.batch(3)
    for slot, name in enumerate(names):
        batch.put(slot, classifier.prepare(objects[name]))
    chelsea, coffee, garbage = batch.label([0, 1, 2], top_k=1)()
    assert not isinstance(chelsea, str) and not isinstance(coffee, str)
    [cpu] = classifier.predict([classifier.preprocess(classifier.decode(jpegs["coffee"]))], 1)
    assert (coffee[0].label, coffee[0].score) == (cpu[0].label, pytest.approx(cpu[0].score))
    cpu_garbage = ImageClassifier(lite0_dir, "cpu", device_decode=False)
    [expected] = _rows(cpu_garbage, {"garbage.jpg": objects["garbage"]}, 1)
    if expected.status == "error":
        assert garbage == expected.error
    else:
        assert not isinstance(garbage, str) and garbage[0].label == expected.label


def _rows(
    classifier: ImageClassifier, objects: dict[str, bytes], batch_size: int
) -> list[ClassificationRow]:
    def fetch(key: str) -> Fetched:
        return Fetched(key=key, etag="e", size=len(objects[key]), data=objects[key])

    jobs = [Job("2026-12-04", key) for key in objects]
    batches = classify_objects(jobs, fetch, classifier, batch_size=batch_size, top_k=3)
    return [row for batch in batches for row in batch]


@pytest.mark.usefixtures("nvjpeg_stand_in")
def test_with_nvjpeg_on_the_decode_processes_stay_idle_and_the_threads_decode(
    lite0_dir: str,
) -> None:
    """Both asked for: nvJPEG decides, so the threads bound decoding, as it reports."""
    classifier = load_classifier(lite0_dir, "cpu", device_decode=True, decode_processes=2)
    assert classifier.on_device is not None and classifier.workers is not None
    try:
        assert classifier.decode_concurrency == DEFAULT_DECODE_CONCURRENCY
        assert classifier.decoding.startswith("nvJPEG on cpu")
        time.sleep(1)  # a start in the background would have its workers by now
        assert classifier.workers.pids == []  # none started: none would decode
    finally:
        classifier.workers.close()
