"""The fast preprocessing path gives the model what its transformers image processor gives it."""

import logging

import numpy as np
import PIL
import pytest
import torch
from PIL import Image
from torch.nn import functional
from transformers import ConvNextImageProcessorPil, ViTImageProcessorPil

from ai_assets.vision.convert import build_image_processor
from ai_assets.vision.decode import decode_image
from ai_assets.vision.preprocess import (
    FastPreprocessor,
    Geometry,
    ProcessorPreprocessor,
    affine_of,
    build_preprocessor,
    max_difference,
    pillow_height_first,
    reference_image,
)
from ai_assets_dev.samples import encode
from ai_assets_tests.support.util import size as size_of

LEVEL = 1 / 255 / 0.5  # one uint8 level after EfficientNet-Lite0's rescale and normalise
SIZES = [(331, 217), (217, 331), (640, 480), (512, 512), (100, 60), (3000, 400), (256, 256)]
SIZES += [(300, 800), (200, 2000)]  # tall: Pillow 13 resizes their height first


@pytest.fixture(scope="module")
def lite0_processor():
    return build_image_processor()


def test_the_bundled_model_gets_the_fast_path(lite0_processor) -> None:
    fast = build_preprocessor(lite0_processor)
    assert isinstance(fast, FastPreprocessor)
    assert fast.geometry == Geometry(resample=3, shortest_edge=256, crop=(224, 224))
    assert fast.min_decode_side == 2 * 256  # draft mode keeps twice the model input (DRAFT_MARGIN)


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_fast_path_matches_the_processor_to_rounding(lite0_processor, size) -> None:
    image = reference_image(*size)
    fast, slow = build_preprocessor(lite0_processor), ProcessorPreprocessor(lite0_processor)
    assert max_difference(fast, slow, image) <= 2 * LEVEL + 1e-6


def test_fast_path_matches_on_real_photos(lite0_processor, jpegs: dict[str, bytes]) -> None:
    fast, slow = build_preprocessor(lite0_processor), ProcessorPreprocessor(lite0_processor)
    for data in jpegs.values():
        image = decode_image(data)
        a, b = fast.collate([fast(image)], "cpu"), slow.collate([slow(image)], "cpu")
        assert (a - b).abs().max() <= 2 * LEVEL + 1e-6
        assert (a - b).abs().mean() < 0.01 * LEVEL  # almost every value is identical


@pytest.mark.parametrize("resample", [Image.Resampling.BILINEAR, Image.Resampling.BICUBIC])
@pytest.mark.parametrize("size", [(331, 217), (40, 300), (100, 400)], ids=str)
def test_fixed_size_processors_get_the_fast_path_too(resample, size) -> None:
    """Warped to 48×32 (ViT's, DeiT's and Swin's kind); Pillow 13 resizes tall ones height first."""
    processor = ViTImageProcessorPil(size={"height": 32, "width": 48}, resample=resample)
    fast, slow = build_preprocessor(processor), ProcessorPreprocessor(processor)
    assert isinstance(fast, FastPreprocessor) and fast.resize == "torch"
    image = reference_image(*size)
    assert max_difference(fast, slow, image) <= 2 * LEVEL + 1e-6  # torch's rounding
    pillow = FastPreprocessor(fast.geometry, *affine_of(processor), resize="pillow")
    assert max_difference(pillow, slow, image) < 1e-5  # Pillow's own passes: exact


def test_pillow_resizes_a_shrinking_height_first_as_the_fast_path_expects() -> None:
    for width, height in [(217, 331), (331, 217), (640, 480), (150, 200), (300, 800)]:
        image = Image.fromarray(reference_image(width, height))
        whole = np.asarray(image.resize((224, 224), Image.Resampling.BICUBIC))
        if pillow_height_first((width, height), (224, 224)):
            passes = image.resize((width, 224), Image.Resampling.BICUBIC).resize((224, 224))
        else:
            passes = image.resize((224, height), Image.Resampling.BICUBIC).resize((224, 224))
        assert np.array_equal(whole, np.asarray(passes)), (width, height)
    assert pillow_height_first((217, 331), (224, 224)) == (int(PIL.__version__.split(".")[0]) >= 13)


@pytest.mark.parametrize(
    ("edge", "geometry"),
    [
        (224, Geometry(resample=3, shortest_edge=256, crop=(224, 224))),  # 224 / crop_pct, crop
        (384, Geometry(resample=3, size=(384, 384))),  # warped: ConvNeXt's rule from 384 px
    ],
)
def test_convnext_processors_get_the_fast_path(edge: int, geometry: Geometry) -> None:
    processor = ConvNextImageProcessorPil(size={"shortest_edge": edge})
    fast, slow = build_preprocessor(processor), ProcessorPreprocessor(processor)
    assert isinstance(fast, FastPreprocessor) and fast.geometry == geometry
    for size in SIZES:
        assert max_difference(fast, slow, reference_image(*size)) <= 2 * LEVEL + 1e-6


def test_filters_torch_cannot_reproduce_are_resized_by_pillow() -> None:
    processor = ViTImageProcessorPil(size={"height": 32, "width": 48}, resample=Image.LANCZOS)
    fast = build_preprocessor(processor)
    assert isinstance(fast, FastPreprocessor) and fast.resize == "pillow"
    assert max_difference(fast, ProcessorPreprocessor(processor), reference_image()) < 1e-5


def test_collate_gives_a_channels_last_float_batch(lite0_processor) -> None:
    fast = build_preprocessor(lite0_processor)
    tensors = [fast(reference_image(*size)) for size in SIZES[:3]]
    assert all(t.dtype == torch.uint8 and t.shape == (3, 224, 224) for t in tensors)
    batch = fast.collate(tensors, "cpu")
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    assert float(batch.min()) >= -1.0 - 1e-6 and float(batch.max()) <= 1.0 + 1e-6  # one FMA


@pytest.mark.parametrize("size", SIZES, ids=str)
def test_torch_resize_gives_interpolates_values_in_pixel_line_memory(lite0_processor, size) -> None:
    """The kernel's out= form writes HWC memory, and the same values as ``interpolate``."""
    fast = build_preprocessor(lite0_processor)
    assert isinstance(fast, FastPreprocessor) and fast.resize == "torch"
    pixels = reference_image(*size)
    crop = fast(pixels)
    assert crop.stride(0) == 1  # channels innermost: each pixel line is one run of memory
    (new_w, new_h), (left, top) = fast.geometry.crop_origin(*size)
    image = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
    if pillow_height_first(size, (new_w, new_h)):  # as Pillow 13 orders it: height, then width
        image = functional.interpolate(image, (new_h, size[0]), mode="bicubic", antialias=True)
    resized = functional.interpolate(image, (new_h, new_w), mode="bicubic", antialias=True)
    assert torch.equal(crop, resized[0, :, top : top + 224, left : left + 224])


def test_slots_take_images_in_any_memory_layout(lite0_processor) -> None:
    fast = build_preprocessor(lite0_processor)
    crop = fast(reference_image(640, 480))
    for dtype in (torch.float32, torch.uint8):
        buffer = torch.empty((2, 3, 224, 224), dtype=dtype, memory_format=torch.channels_last)
        fast.put(buffer, 0, crop)
        fast.put(buffer, 1, crop.contiguous())  # CHW memory, not the resize's pixel lines
        assert torch.equal(buffer[0], buffer[1])


@pytest.mark.parametrize("resize", ["torch", "pillow"])
def test_collate_applies_each_channels_own_affine(resize: str) -> None:
    """The batch-wide affine (tiled over pixel lines) is the per-channel one, channel by channel."""
    geometry = Geometry(Image.Resampling.BICUBIC, shortest_edge=40, crop=(32, 24))
    scale, shift = np.array([1.0, 2.0, 3.0]) / 255, np.array([-0.5, 0.25, -1.0])
    fast = FastPreprocessor(geometry, scale, shift, resize)
    tensors = [fast(reference_image(*size)) for size in SIZES[:4]]
    batch = fast.collate(tensors, "cpu")
    assert batch.is_contiguous(memory_format=torch.channels_last)
    for image, got in zip(tensors, batch, strict=True):
        for channel in range(3):
            want = image[channel].float() * scale[channel] + shift[channel]
            torch.testing.assert_close(got[channel], want.float(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["fast", "processor"])
def test_slots_filled_out_of_order_and_with_gaps_give_the_collated_batch(
    lite0_processor, kind: str
) -> None:
    """Worker threads fill slots as their images are ready; failed objects leave gaps."""
    preprocessor = (
        build_preprocessor(lite0_processor)
        if kind == "fast"
        else ProcessorPreprocessor(lite0_processor)
    )
    tensors = [preprocessor(reference_image(*size)) for size in SIZES[:3]]
    buffer = preprocessor.buffer(4, "cpu")
    for slot, tensor in ((3, tensors[2]), (0, tensors[0]), (2, tensors[1])):
        preprocessor.put(buffer, slot, tensor)
    batch = preprocessor.model_input(buffer, [0, 2, 3], "cpu")
    assert batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch, preprocessor.collate(tensors, "cpu"), rtol=0, atol=0)


def test_uint8_slots_are_normalised_when_handed_to_the_model(lite0_processor) -> None:
    """The accelerator's path (uint8 slots, normalised after the copy), run on the CPU."""
    fast = build_preprocessor(lite0_processor)
    tensors = [fast(reference_image(*size)) for size in SIZES[:3]]
    buffer = torch.empty((3, 3, 224, 224), dtype=torch.uint8, memory_format=torch.channels_last)
    for slot, tensor in enumerate(tensors):
        fast.put(buffer, slot, tensor)
    batch = fast.model_input(buffer, range(3), "cpu")
    assert batch.dtype == torch.float32
    assert batch.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(batch, fast.collate(tensors, "cpu"), rtol=0, atol=1e-6)


def test_unsupported_configurations_use_the_processor(lite0_processor) -> None:
    padded = ViTImageProcessorPil(size={"height": 32, "width": 32}, do_pad=True)
    longest = ViTImageProcessorPil(size={"longest_edge": 64})
    no_resize = ViTImageProcessorPil(do_resize=False)
    uncropped = ViTImageProcessorPil(size={"shortest_edge": 64})  # each image its own size
    for processor in (padded, longest, no_resize, uncropped):
        assert isinstance(build_preprocessor(processor), ProcessorPreprocessor)


def test_a_processor_the_fast_path_cannot_reproduce_is_used_as_it_is(
    lite0_processor, caplog: pytest.LogCaptureFixture
) -> None:
    class Mirrored(type(lite0_processor)):  # its config says one thing, its code does more
        def resize(self, image: np.ndarray, *args, **kwargs) -> np.ndarray:
            return super().resize(np.ascontiguousarray(image[:, :, ::-1]), *args, **kwargs)

    processor = Mirrored(**lite0_processor.to_dict())
    with caplog.at_level(logging.WARNING, logger="ai_assets.vision.preprocess"):
        chosen = build_preprocessor(processor)
    assert isinstance(chosen, ProcessorPreprocessor)
    assert "using the image processor" in caplog.text


def test_draft_decoding_keeps_both_sides_at_least_min_side() -> None:
    data = encode(Image.new("RGB", (2048, 1100), (120, 30, 200)))
    assert size_of(decode_image(data)) == (2048, 1100)
    assert size_of(decode_image(data, min_side=256)) == (512, 275)  # 1/4: 1/8 is 137 high
    assert size_of(decode_image(data, min_side=2000)) == (2048, 1100)  # no scale keeps 2000
    png = encode(Image.new("RGB", (900, 900)), "PNG")
    assert size_of(decode_image(png, min_side=64)) == (900, 900)  # draft is JPEG only
