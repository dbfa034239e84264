import io
import threading
import time
from typing import Any
from unittest import mock

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from ai_assets.s3.objects import Fetched
from ai_assets.vision.decode import ImageError, _draft_scale, decode_image  # pyright: ignore[reportPrivateUsage]
from ai_assets.vision.model import ImageClassifier, choose_model_threads, load_classifier
from ai_assets.vision.preprocess import reference_image
from ai_assets.vision.stream import Job, classify_objects
from ai_assets_dev.samples import encode
from ai_assets_tests.support.util import size as size_of


def png(image: Image.Image) -> bytes:
    return encode(image, "PNG")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty object"),
        (b"\x00\x01garbage" * 100, "not a recognised image format"),
        (b"plain text, not a png", "not a recognised image format"),
    ],
)
def test_undecodable_bytes_raise_a_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        decode_image(data)


#: JPEGs decoded in full (min_side 0) and in draft mode for a 256 px model input.
DECODERS = pytest.mark.parametrize("min_side", [0, 256], ids=["full", "draft"])


@DECODERS
def test_truncated_jpeg_is_an_error(jpegs: dict[str, bytes], min_side: int) -> None:
    with pytest.raises(ImageError, match="cannot decode"):
        decode_image(jpegs["chelsea"][:2000], min_side=min_side)


@pytest.mark.parametrize(
    ("size", "decoded"),
    [((640, 480), (640, 480)), ((480, 640), (480, 640)), ((2400, 1600), (600, 400)),
     ((1000, 700), (500, 350)), ((4000, 3000), (500, 375)), ((200, 100), (200, 100))],
)  # fmt: skip
def test_a_jpeg_decodes_at_the_smallest_draft_scale_that_covers_the_input(
    size: tuple[int, int], decoded: tuple[int, int]
) -> None:
    """1/2, 1/4 or 1/8 while both sides stay ≥ 256."""
    data = encode(Image.new("RGB", size, (200, 30, 30)), "JPEG")
    assert size_of(decode_image(data, min_side=256)) == decoded


def pillow_alone(data: bytes, min_side: int = 0) -> np.ndarray:
    """What Pillow alone makes of ``data``: the decode that libjpeg-turbo's direct one replaced."""
    image = Image.open(io.BytesIO(data))
    if min_side:
        image.draft(image.mode, (min_side, min_side))
    return np.array(ImageOps.exif_transpose(image).convert("RGB"))


def srgb() -> Any:
    return ImageCms.createProfile("sRGB")


@DECODERS
def test_jpegs_decode_to_the_pixels_pillow_gives(jpegs: dict[str, bytes], min_side: int) -> None:
    photo = Image.open(io.BytesIO(jpegs["coffee"]))
    others = {
        "large": encode(photo.resize((2400, 1600))),
        "progressive": encode(photo, progressive=True),
        "grey": encode(photo.convert("L")),
        "cmyk": encode(photo.convert("CMYK")),  # left to Pillow: libjpeg-turbo gives no RGB
        "4:4:4": encode(photo, subsampling=0, quality=95),
        "icc profile": encode(photo, icc_profile=ImageCms.ImageCmsProfile(srgb()).tobytes()),
        "restart markers": encode(photo, restart_marker_rows=1),
        "xmp orientation": encode(photo, xmp=XMP_ROTATED),
        "two pictures (mpo)": encode(photo, "MPO", save_all=True, append_images=[photo.rotate(90)]),
    }
    for name, data in {**jpegs, **others}.items():
        decoded = decode_image(data, min_side=min_side)
        assert decoded.dtype == np.uint8 and decoded.flags.c_contiguous, name
        np.testing.assert_array_equal(decoded, pillow_alone(data, min_side), err_msg=name)


#: An XMP packet that turns the picture, as cameras write it beside (or instead of) EXIF.
XMP_ROTATED = (
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-'
    b'syntax-ns#"><rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" '
    b'tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
)


def test_plain_jpegs_skip_pillow_and_the_others_take_its_path(jpegs: dict[str, bytes]) -> None:
    """Pillow's Python header parser is what the plain path saves; anything Pillow would read
    differently (EXIF, XMP, several pictures, CMYK, too many pixels) still goes through it."""
    photo = Image.open(io.BytesIO(jpegs["coffee"]))
    exif = Image.Exif()
    exif[0x0112] = 1
    plain = {"photo": jpegs["coffee"], "grey": encode(photo.convert("L")),
             "progressive": encode(photo, progressive=True)}  # fmt: skip
    with mock.patch("ai_assets.vision.decode.Image.open", side_effect=AssertionError("Pillow")):
        for name, data in plain.items():
            assert decode_image(data, min_side=256).shape[2] == 3, name
    pillow = {
        "exif": encode(photo, exif=exif),
        "xmp": encode(photo, xmp=XMP_ROTATED),
        "mpo": encode(photo, "MPO", save_all=True, append_images=[photo]),
        "cmyk": encode(photo.convert("CMYK")),
    }
    for name, data in pillow.items():
        with mock.patch("ai_assets.vision.decode.Image.open", wraps=Image.open) as opened:
            decode_image(data)
        assert opened.called, name
    with pytest.raises(ImageError, match="above the limit of 1,000"):
        decode_image(jpegs["coffee"], max_pixels=1_000)  # Pillow's path says why
    scan = jpegs["coffee"].index(b"\xff\xda")
    junk = jpegs["coffee"][:scan] + b"\xff\x01" + jpegs["coffee"][scan:]  # no marker Pillow knows
    with (
        mock.patch("ai_assets.vision.decode.Image.open", wraps=Image.open) as opened,
        pytest.raises(ImageError, match="not a recognised image format"),
    ):
        decode_image(junk)  # Pillow's verdict, as before the plain path
    assert opened.called


@pytest.mark.parametrize("min_side", [0, 1, 100, 256, 333])
def test_the_plain_path_draft_scale_is_pillows(min_side: int) -> None:
    for width, height in [(1, 1), (255, 700), (256, 256), (511, 2048), (512, 1024),
                          (1023, 777), (2048, 2100), (4000, 257), (4097, 3000)]:  # fmt: skip
        image = Image.open(io.BytesIO(encode(Image.new("RGB", (width, height)))))
        if min_side:
            image.draft("RGB", (min_side, min_side))
        scale = _draft_scale(width, height, min_side)
        assert (-(-width // scale), -(-height // scale)) == image.size, (width, height)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_shown_upright(fmt: str, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(reference_image(48, 32)), fmt, exif=exif)
    decoded = decode_image(data)
    assert decoded.flags.c_contiguous
    np.testing.assert_array_equal(decoded, pillow_alone(data))


def test_a_jpeg_libjpeg_turbo_warns_about_is_decoded_by_pillow(jpegs: dict[str, bytes]) -> None:
    data = jpegs["chelsea"]
    scan = data.index(b"\xff\xda")
    damaged = data[:scan] + b"\0\0\0" + data[scan:]  # "3 extraneous bytes before marker 0xda"
    np.testing.assert_array_equal(decode_image(damaged), pillow_alone(damaged))


def test_oversize_images_are_refused_before_decoding() -> None:
    data = png(Image.new("L", (3000, 3000)))
    with pytest.raises(ImageError, match="9,000,000 pixels, above the limit of 1,000,000"):
        decode_image(data, max_pixels=1_000_000)


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (20, 10), (255, 0, 0, 0)),
        Image.new("P", (20, 10)),
        Image.new("I;16", (20, 10), 40000),
        Image.new("CMYK", (20, 10)),
        Image.new("LA", (20, 10)),
        Image.new("1", (1, 1)),
    ],
    ids=lambda image: image.mode,
)
def test_every_mode_becomes_rgb(image: Image.Image) -> None:
    fmt = "JPEG" if image.mode == "CMYK" else "PNG"
    decoded = decode_image(encode(image, fmt))
    assert decoded.shape == (image.height, image.width, 3) and decoded.dtype == np.uint8


def test_sixteen_bit_grey_is_scaled_not_clipped() -> None:
    decoded = decode_image(png(Image.new("I;16", (4, 4), 65535)))
    assert decoded[0, 0].tolist() == [255, 255, 255]


@DECODERS
def test_exif_rotation_is_applied(min_side: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    Image.new("RGB", (640, 320)).save(buffer, "JPEG", exif=exif)
    expected = (320, 640)  # 320 // 256 = 1: decoded whole either way
    assert size_of(decode_image(buffer.getvalue(), min_side=min_side)) == expected


def test_animated_gif_uses_the_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(buffer.getvalue())[0, 0, 0] > 200


def test_classify_objects_turns_bad_objects_into_error_rows(
    tiny_model_dir: str, jpegs: dict[str, bytes]
) -> None:
    objects = {
        "chelsea.jpg": jpegs["chelsea"],
        "broken.jpg": b"not an image",
        "coffee.jpg": jpegs["coffee"],
        "empty.png": b"",
    }

    def fetch(key: str) -> Fetched:
        if key in objects:
            data = objects[key]
            return Fetched(key=key, etag=f"etag-{key}", size=len(data), data=data)
        return Fetched(key=key, deleted=True)

    classifier = load_classifier(tiny_model_dir, "cpu")
    jobs = [Job(key, key) for key in [*objects, "gone.jpg"]]
    batches = list(
        classify_objects(jobs, fetch, classifier, batch_size=2, top_k=3, concurrency=2, run_id="r")
    )
    assert [len(batch) for batch in batches] == [2, 2, 1]
    rows = {row.s3_key: row for batch in batches for row in batch}
    assert {key: row.status for key, row in rows.items()} == {
        "chelsea.jpg": "ok",
        "broken.jpg": "error",
        "coffee.jpg": "ok",
        "empty.png": "error",
        "gone.jpg": "deleted",
    }
    chelsea = rows["chelsea.jpg"]
    assert chelsea.label in {"alpha", "beta", "gamma", "delta"}
    assert chelsea.top_k is not None and len(chelsea.top_k) == 3
    assert chelsea.top_k[0] == {"label": chelsea.label, "score": chelsea.score}
    assert 0.0 <= (chelsea.score or -1) <= 1.0
    assert chelsea.etag == "etag-chelsea.jpg" and chelsea.run_id == "r"
    assert rows["broken.jpg"].error == "not a recognised image format"
    assert rows["empty.png"].error == "empty object (0 bytes)"
    assert rows["broken.jpg"].label is None


def test_objects_after_a_failed_one_get_their_own_labels(
    tiny_model_dir: str, jpegs: dict[str, bytes]
) -> None:
    """A failed object leaves a gap in its batch; the others are labelled as if alone."""
    objects = {"a.jpg": b"not an image", "b.jpg": jpegs["chelsea"], "c.png": b"",
               "d.jpg": jpegs["coffee"], "e.jpg": jpegs["chelsea"][:2000]}  # fmt: skip

    def fetch(key: str) -> Fetched:
        return Fetched(key=key, etag="e", size=len(objects[key]), data=objects[key])

    classifier = load_classifier(tiny_model_dir, "cpu")
    jobs = [Job("2026-12-01", key) for key in objects]
    rows = {
        row.s3_key: row
        for batch in classify_objects(jobs, fetch, classifier, batch_size=5, top_k=2)
        for row in batch
    }
    assert {key: row.status for key, row in rows.items()} == {
        "a.jpg": "error", "b.jpg": "ok", "c.png": "error", "d.jpg": "ok", "e.jpg": "error",
    }  # fmt: skip
    for key in ("b.jpg", "d.jpg"):
        [alone] = classifier.predict([classifier.prepare(objects[key])], top_k=2)
        assert [label["label"] for label in rows[key].top_k or []] == [x.label for x in alone]
        assert rows[key].score == pytest.approx(alone[0].score, abs=1e-5)


def test_all_threads_fetch_but_only_decode_concurrency_of_them_decode_at_once(
    tiny_model_dir: str, jpegs: dict[str, bytes]
) -> None:
    """Decoding shares one GIL: more threads at it only contend; waiting on S3 does not."""
    classifier = load_classifier(tiny_model_dir, "cpu")
    data = jpegs["chelsea"]
    all_fetching = threading.Barrier(6, timeout=60)  # broken unless 6 fetches are in flight
    decoding, most, lock = [0], [0], threading.Lock()

    def fetch(key: str) -> Fetched:
        if int(key.split(".")[0]) < 6:
            all_fetching.wait()
        return Fetched(key=key, etag="e", size=len(data), data=data)

    def prepare(data: bytes, max_pixels: int) -> Any:
        with lock:
            decoding[0] += 1
            most[0] = max(most[0], decoding[0])
        try:
            time.sleep(0.01)  # long enough for the other threads to try to decode too
            return original(data, max_pixels)
        finally:
            with lock:
                decoding[0] -= 1

    original = classifier.prepare
    jobs = [Job("2026-12-04", f"{i}.jpg") for i in range(24)]
    with mock.patch.object(classifier, "prepare", prepare):
        batches = classify_objects(
            jobs, fetch, classifier, batch_size=8, top_k=1, concurrency=6, decode_concurrency=2
        )
        rows = [row for batch in batches for row in batch]
    assert [row.status for row in rows] == ["ok"] * 24
    assert most == [2]


def test_predictions_do_not_depend_on_batch_composition(
    tiny_model_dir: str, jpegs: dict[str, bytes]
) -> None:
    classifier = load_classifier(tiny_model_dir, "cpu")
    pixels = [classifier.preprocess(decode_image(data)) for data in jpegs.values()]
    alone = [classifier.predict([p], top_k=1)[0][0].label for p in pixels]
    together = [labels[0].label for labels in classifier.predict(pixels, top_k=1)]
    assert alone == together


def test_extreme_aspect_ratios_keep_only_the_centre() -> None:
    assert size_of(decode_image(png(Image.new("L", (10000, 3))))) == (24, 3)
    assert size_of(decode_image(png(Image.new("L", (2, 5000))))) == (2, 16)
    assert size_of(decode_image(png(Image.new("L", (800, 100))))) == (800, 100)


def test_fetch_threads_yield_the_cpu_to_inference_and_run_torch_alone() -> None:
    import os
    import threading

    import torch

    from ai_assets.vision.threads import yield_to_inference

    threads = torch.get_num_threads()
    seen: list[tuple[int, int]] = []

    def worker(yields: bool) -> None:
        if yields:
            yield_to_inference()
        seen.append((os.sched_getscheduler(0), torch.get_num_threads()))

    for yields in (True, False):
        thread = threading.Thread(target=worker, args=(yields,))
        thread.start()
        thread.join()
    assert seen == [(os.SCHED_IDLE, 1), (os.SCHED_OTHER, threads)]  # the next thread: torch's own
    assert os.sched_getscheduler(0) == os.SCHED_OTHER  # the calling thread keeps its policy
    assert torch.get_num_threads() == threads  # and its torch threads (the model's)


def test_precision_is_validated_and_bf16_classifies(
    tiny_model_dir: str, jpegs: dict[str, bytes]
) -> None:
    import torch

    with pytest.raises(ValueError, match="precision must be one of"):
        load_classifier(tiny_model_dir, "cpu", "int3")
    classifier = load_classifier(tiny_model_dir, "cpu", "bf16")
    assert next(classifier.model.parameters()).dtype == torch.bfloat16
    pixels = [classifier.preprocess(classifier.decode(data)) for data in jpegs.values()]
    labels = classifier.predict(pixels, top_k=2)
    assert all(0.0 <= label.score <= 1.0 for row in labels for label in row)


def test_a_model_loads_once_however_its_arguments_are_spelled(tiny_model_dir: str) -> None:
    from ai_assets.settings import DEFAULT_PRECISION

    once = load_classifier(tiny_model_dir, "cpu")
    assert load_classifier(tiny_model_dir) is once  # the device chosen: the CPU here
    assert load_classifier(tiny_model_dir, "cpu", DEFAULT_PRECISION, True, False) is once
    assert load_classifier(tiny_model_dir, precision=DEFAULT_PRECISION) is once
    assert load_classifier(tiny_model_dir, "cpu", jpeg_draft=False) is not once


def test_a_model_loads_without_the_cyclic_collector_then_is_frozen_out_of_it(
    tiny_model_dir: str,
) -> None:
    import gc

    gc.unfreeze()  # whatever an earlier test loaded
    passes: list[int] = []
    gc.callbacks.append(record := lambda phase, info: passes.append(info["generation"]))
    try:
        classifier = ImageClassifier(tiny_model_dir, "cpu")
        with pytest.raises(ValueError, match="precision"):
            ImageClassifier(tiny_model_dir, "cpu", "int3")
    finally:
        gc.callbacks.remove(record)
    assert passes == []  # not one pass while it loaded
    assert gc.isenabled()  # on again after a load, and after a load that failed
    assert gc.get_freeze_count() > 0
    tracked = gc.get_objects()  # every generation the collector walks; frozen objects are not
    assert not any(o is classifier.model or o is classifier for o in tracked)
    after = object.__new__(type("After", (), {}))  # what the process makes later stays tracked
    assert gc.is_tracked(after) and any(o is after for o in gc.get_objects())


def test_warm_up_runs_once_per_batch_size(tiny_model_dir: str, monkeypatch) -> None:
    classifier = ImageClassifier(tiny_model_dir, "cpu")  # a fresh one: nothing warmed yet
    calls: list[int] = []
    original = classifier.classify_batch
    monkeypatch.setattr(
        classifier,
        "classify_batch",
        lambda batch, k: calls.append(len(batch)) or original(batch, k),
    )
    for size in (4, 4, 2):
        classifier.warm_up(size)
    assert calls == [4, 2]


@pytest.mark.parametrize(
    ("ms_per_image", "threads", "chosen"),
    [
        (0.25, 2, 1),  # the near-zero model on 2 cores: 0.5 ms alone, the other core feeds it
        (0.25, 16, 16),  # on 16 cores one thread could not keep up with 15 cores' feed
        (0.75, 2, 2),  # 1.5 ms alone: slower than the feed on the other core
        (8.0, 2, 2),  # the bundled model
        (8.0, 1, 1),
    ],
)
def test_a_model_runs_on_one_thread_only_where_it_keeps_up_with_the_feed(
    ms_per_image: float, threads: int, chosen: int
) -> None:
    assert choose_model_threads(ms_per_image / 1000, threads) == chosen


def test_the_first_warm_up_chooses_the_threads_every_forward_pass_runs_on(
    tiny_model_dir: str, lite0_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One thread for the tiny model (its choice stubbed: its time on a loaded machine is not
    this test's), torch's for the bundled one (~8 ms per image: chosen as it runs), whatever
    the calling thread's own setting."""
    import torch

    from ai_assets.vision import model
    from ai_assets.vision.threads import set_torch_threads

    default = torch.get_num_threads()
    torch.set_num_threads(2)  # as on this project's 2-core machines, whatever this one has
    try:
        with monkeypatch.context() as patch:
            patch.setattr(model, "available_cores", lambda: 2)  # and whatever its CPU limit
            tiny, lite0 = ImageClassifier(tiny_model_dir, "cpu"), ImageClassifier(lite0_dir, "cpu")
    finally:
        torch.set_num_threads(default)
    seen: list[int] = []
    for classifier in (tiny, lite0):
        classifier.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
        assert classifier.model_threads == 2  # not warmed up: torch's threads at its load
    timed: list[tuple[float, int]] = []
    with monkeypatch.context() as patch:
        chosen = lambda s, threads: timed.append((s, threads)) or 1  # noqa: E731
        patch.setattr(model, "choose_model_threads", chosen)
        tiny.warm_up(32)
        tiny.warm_up(1)  # later warm-ups keep the first's choice
    assert len(timed) == 1 and timed[0][0] > 0 and timed[0][1] == 2
    lite0.warm_up(8)
    assert (tiny.model_threads, lite0.model_threads) == (1, 2)

    def forward_passes() -> None:
        for classifier in (tiny, lite0, tiny):
            blank = classifier.preprocess(np.zeros((64, 64, 3), np.uint8))
            classifier.predict([blank], top_k=1)

    seen.clear()
    forward_passes()
    after: list[int] = []

    def in_a_fetch_thread() -> None:
        set_torch_threads(1)
        forward_passes()
        after.append(torch.get_num_threads())

    worker = threading.Thread(target=in_a_fetch_thread)
    worker.start()
    worker.join()
    assert seen == [1, 2, 1] * 2
    # each thread's own setting is its own again after the passes
    assert (torch.get_num_threads(), after) == (default, [1])


def test_the_bundled_model_runs_with_folded_batchnorms_and_the_same_labels(
    lite0_dir: str, jpegs: dict[str, bytes]
) -> None:
    folded, plain = load_classifier(lite0_dir, "cpu"), ImageClassifier(lite0_dir, "cpu", fold=False)
    assert folded.folded == 49 and plain.folded == 0
    pixels = [folded.preprocess(folded.decode(data)) for data in jpegs.values()]
    for a, b in zip(folded.predict(pixels, 5), plain.predict(pixels, 5), strict=True):
        assert [label.label for label in a] == [label.label for label in b]
        assert [label.score for label in a] == pytest.approx([label.score for label in b], abs=1e-4)


def test_a_convnext_checkpoint_labels_images_as_transformers_pipeline_does(
    tmp_path, jpegs: dict[str, bytes]
) -> None:
    """ConvNeXt's processor resizes by its crop_pct rule (no do_center_crop, no crop_size)."""
    import torch
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        ConvNextImageProcessorPil,
        pipeline,
    )

    torch.manual_seed(0)
    labels = {0: "alpha", 1: "beta", 2: "gamma", 3: "delta"}
    config = ConvNextConfig(num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], id2label=labels)
    ConvNextForImageClassification(config).save_pretrained(tmp_path)
    ConvNextImageProcessorPil(size={"shortest_edge": 224}).save_pretrained(tmp_path)
    ours, theirs = (
        ImageClassifier(str(tmp_path), "cpu"),
        pipeline("image-classification", model=str(tmp_path)),
    )
    for data in jpegs.values():
        [mine] = ours.predict([ours.prepare(data)], top_k=4)
        reference = theirs(ImageOps.exif_transpose(Image.open(io.BytesIO(data))), top_k=4)
        got = {label.label: label.score for label in mine}
        assert got == pytest.approx({r["label"]: r["score"] for r in reference}, abs=5e-4)


@pytest.mark.integration  # a subprocess or a server
def test_importing_the_package_changes_no_pillow_global() -> None:
    import subprocess
    import sys

    code = (
        "from PIL import Image; default = Image.MAX_IMAGE_PIXELS; "
        "import ai_assets.definitions, ai_assets.model_service, ai_assets.vision.stream; "
        "print(Image.MAX_IMAGE_PIXELS == default)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "True", done.stderr[-2000:]
