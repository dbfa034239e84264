"""Model input from decoded images: geometry in uint8 per image, an affine into the batch.

transformers' PIL image processors resize, crop, rescale and normalise every image in float
numpy (~5 ms for a 500 px photo on one core). The same tensor comes from resizing in uint8
(torch's antialiased interpolate, or Pillow over the centre-crop box alone) and applying
rescale + normalise as one per-channel affine in torch while the float batch is assembled.
The fast path reads its geometry from the processor's config, takes its affine from the
processor itself, and is checked against the processor when the model loads (torch's resize
first, then Pillow's); a processor neither reproduces is used as it is.

Pure logic: no Dagster here; torch is imported only by the functions that need it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import PIL
from PIL import Image

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

#: The fast path differs from the processor by rounding only: a level or two of 255, where
#: bicubic's negative lobes carry the intermediate pass's rounding; a wrong config differs more.
_TOLERANCE_LEVELS = 2.0
#: Pillow 13 resizes an image's height first when it shrinks by more than twice as many pixels
#: as its width (earlier versions always begin with the width); the order changes the rounding.
_PILLOW_HEIGHT_FIRST = int(PIL.__version__.split(".")[0]) >= 13
#: JPEG draft mode keeps both sides at least this many times the model's input side. libjpeg's
#: DCT scaling down to the input size itself changed the top-1 label of 1.3 % of the bench
#: corpus and 4.4 % of large photos against transformers' own path (full decode, one bicubic
#: resize); at twice the input, 0.2 % and 1.9 %, still ~1.6x faster than a full decode there.
DRAFT_MARGIN = 2


def pillow_height_first(source: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether Pillow resizes ``source`` (width, height) to ``target`` height first."""
    shrink_w, shrink_h = source[0] - target[0], source[1] - target[1]
    return _PILLOW_HEIGHT_FIRST and shrink_h > 0 and shrink_h > 2 * shrink_w


class Preprocessor(Protocol):
    """One image's RGB pixels (H, W, 3) uint8 → a tensor → its slot in a batch → model input.

    Worker threads ``put`` each image into its slot as soon as it is prepared, so the thread
    that calls the model only hands the filled buffer over (``model_input``).
    """

    #: Smallest width and height a decoder must keep (JPEG draft mode); 0 = decode in full.
    min_decode_side: int

    def __call__(self, pixels: np.ndarray) -> torch.Tensor: ...

    def buffer(self, size: int, device: str) -> Any:
        """Room for ``size`` images' model input."""
        ...

    def put(self, buffer: Any, slot: int, tensor: torch.Tensor) -> None:
        """One image's tensor into its slot (worker threads; one slot per thread)."""
        ...

    def model_input(self, buffer: Any, slots: Sequence[int], device: str) -> torch.Tensor:
        """The filled ``slots`` as the model's (N, 3, H, W) channels_last input on ``device``."""
        ...

    def collate(self, tensors: Sequence[torch.Tensor], device: str) -> torch.Tensor:
        """A whole batch at once (the load-time checks, the model service)."""
        buffer = self.buffer(len(tensors), device)
        for slot, tensor in enumerate(tensors):
            self.put(buffer, slot, tensor)
        return self.model_input(buffer, range(len(tensors)), device)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Resize (shortest edge, or a fixed size) then optionally centre-crop, as transformers."""

    resample: int
    shortest_edge: int | None = None
    size: tuple[int, int] | None = None  # (width, height)
    crop: tuple[int, int] | None = None  # (width, height)

    def resized(self, width: int, height: int) -> tuple[int, int]:
        """The size transformers resizes to (``get_resize_output_image_size``: truncates)."""
        if self.size is not None:
            return self.size
        assert self.shortest_edge is not None
        short, long = min(width, height), max(width, height)
        new_long = int(self.shortest_edge * long / short)
        if width <= height:
            return self.shortest_edge, new_long
        return new_long, self.shortest_edge

    @property
    def output(self) -> tuple[int, int]:
        if self.crop is not None:
            return self.crop
        assert self.size is not None
        return self.size

    @property
    def min_decode_side(self) -> int:
        """Decoding may shrink an image while both sides stay at least this long."""
        if self.size is not None:
            return DRAFT_MARGIN * max(self.size)
        assert self.shortest_edge is not None
        return DRAFT_MARGIN * self.shortest_edge

    def crop_origin(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The resized size and where the crop starts in it (numpy center_crop's offsets)."""
        new_w, new_h = self.resized(width, height)
        out_w, out_h = self.output
        return (new_w, new_h), ((new_w - out_w) // 2, (new_h - out_h) // 2)

    @property
    def torch_mode(self) -> str | None:
        """torch's antialiased ``interpolate`` mode for this Pillow filter, if it has one."""
        return {Image.Resampling.BILINEAR: "bilinear", Image.Resampling.BICUBIC: "bicubic"}.get(
            Image.Resampling(self.resample)
        )

    def apply_torch(self, pixels: np.ndarray) -> torch.Tensor:
        """Resize in uint8 with torch (antialiased, SIMD, off the GIL), then crop: (3, H, W).

        The whole image is resized, and still in ~60 % of the CPU time of Pillow's passes over
        the crop box alone; the values stay within rounding of Pillow's (checked at load).
        Where Pillow resizes the height first, so does this, in two calls: the height over the
        whole width, then the width over the crop's rows alone.
        The crop is a view in HWC memory: the resize writes there itself through the
        ``interpolate`` kernel's out= form (``interpolate`` alone returns CHW memory, and
        transposing it back cost more than the resize saves; bench/feed.py).
        """
        import torch

        mode = self.torch_mode
        assert mode is not None, "a filter torch has no antialiased mode for"
        height, width = pixels.shape[:2]
        (new_w, new_h), (left, top) = self.crop_origin(width, height)
        out_w, out_h = self.output
        # HWC memory: torch's SIMD uint8 path
        image = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)
        resize = getattr(torch.ops.aten, f"_upsample_{mode}2d_aa")  # interpolate(antialias=True)

        def resized(source: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
            out = torch.empty(
                (1, 3, rows, columns), dtype=torch.uint8, memory_format=torch.channels_last
            )
            resize.out(source, [rows, columns], False, None, None, out=out)
            return out

        if pillow_height_first((width, height), (new_w, new_h)):  # then the crop's rows alone
            tall = resized(image, new_h, width)[:, :, top : top + out_h]
            return resized(tall, out_h, new_w)[0, :, :, left : left + out_w]
        return resized(image, new_h, new_w)[0, :, top : top + out_h, left : left + out_w]

    def cropped(self, pixels: np.ndarray, resize: str) -> torch.Tensor:
        """(H, W, 3) uint8 pixels → the crop, (3, h, w) uint8 in HWC memory, resized by
        ``resize``: "torch" (``apply_torch``) or "pillow" (``apply``)."""
        import torch

        if resize == "torch":
            return self.apply_torch(pixels)
        crop = np.array(self.apply(Image.fromarray(pixels)), dtype=np.uint8)
        return torch.from_numpy(crop).permute(2, 0, 1)

    def apply_device(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) uint8 pixels on any device → the crop, (3, h, w) uint8, as ``apply_torch``.

        For images decoded on the GPU, where torch's antialiased resize works in float: one
        axis at a time in Pillow's order, rounded and clipped in between as uint8 passes are
        (in one float call, the overshoot that clipping removes shifts bicubic edges by up to
        11 levels). The second pass covers the crop's rows or columns alone.
        """
        import torch

        mode = self.torch_mode
        assert mode is not None, "a filter torch has no antialiased mode for"
        height, width = image.shape[1:]
        (new_w, new_h), (left, top) = self.crop_origin(width, height)
        out_w, out_h = self.output

        def resized(source: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
            out = torch.nn.functional.interpolate(
                source, (rows, columns), mode=mode, antialias=True
            )
            return out.round_().clamp_(0, 255)

        pixels = image.unsqueeze(0).float()
        if pillow_height_first((width, height), (new_w, new_h)):
            tall = resized(pixels, new_h, width)[:, :, top : top + out_h]
            crop = resized(tall, out_h, new_w)[0, :, :, left : left + out_w]
        else:
            wide = resized(pixels, height, new_w)[:, :, :, left : left + out_w]
            crop = resized(wide, new_h, out_w)[0, :, top : top + out_h]
        return crop.to(torch.uint8)

    def apply(self, image: Image.Image) -> Image.Image:
        """Resize and crop at once: only the pixels inside the crop box are computed.

        Two one-axis passes in the order Pillow takes for the whole image; a single boxed
        resize may take the other order and round differently.
        """
        width, height = image.size
        (new_w, new_h), (left, top) = self.crop_origin(width, height)
        out_w, out_h = self.output
        sx, sy = width / new_w, height / new_h
        if pillow_height_first((width, height), (new_w, new_h)):
            rows = (0, top * sy, width, (top + out_h) * sy)
            shortened = image.resize((width, out_h), self.resample, box=rows)
            columns = (left * sx, 0, (left + out_w) * sx, out_h)
            return shortened.resize((out_w, out_h), self.resample, box=columns)
        columns = (left * sx, 0, (left + out_w) * sx, height)
        narrowed = image.resize((out_w, height), self.resample, box=columns)
        rows = (0, top * sy, out_w, (top + out_h) * sy)
        return narrowed.resize((out_w, out_h), self.resample, box=rows)

    @classmethod
    def of(cls, processor: Any) -> Geometry | None:
        """The geometry of a transformers image processor, or None if it does something else."""
        if not getattr(processor, "do_resize", False) or getattr(processor, "do_pad", False):
            return None
        size = _as_dict(getattr(processor, "size", None))
        crop = _as_dict(getattr(processor, "crop_size", None))
        resample = int(getattr(processor, "resample", None) or Image.Resampling.BILINEAR)
        crop_pct = getattr(processor, "crop_pct", None)
        if crop_pct is not None:  # ConvNeXt's: below 384 px, resize to edge / crop_pct, crop
            if size.keys() != {"shortest_edge"} or getattr(processor, "do_center_crop", False):
                return None
            edge = int(size["shortest_edge"])
            if edge >= 384:  # its rule: warped to a square, not cropped
                return cls(resample, size=(edge, edge))
            return cls(resample, shortest_edge=int(edge / crop_pct), crop=(edge, edge))
        if size.keys() == {"shortest_edge"}:
            geometry = cls(resample, shortest_edge=int(size["shortest_edge"]))
        elif size.keys() == {"height", "width"}:
            geometry = cls(resample, size=(int(size["width"]), int(size["height"])))
        else:
            return None
        if getattr(processor, "do_center_crop", False):
            if crop.keys() != {"height", "width"}:
                return None
            geometry = dataclasses.replace(geometry, crop=(int(crop["width"]), int(crop["height"])))
            # a crop larger than the resized image would pad: leave that to the processor
            smallest = geometry.size or (geometry.shortest_edge, geometry.shortest_edge)
            if geometry.crop[0] > smallest[0] or geometry.crop[1] > smallest[1]:  # type: ignore[index]
                return None
        elif geometry.size is None:  # each image's own size: no batch buffer has room for it
            return None
        return geometry


def _as_dict(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    items = value.items() if hasattr(value, "items") else vars(value).items()
    return {k: v for k, v in items if v is not None}


class ProcessorPreprocessor(Preprocessor):
    """The model's own transformers image processor, image by image (float tensors)."""

    min_decode_side = 0

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        image = Image.fromarray(pixels)  # as transformers' pipeline hands it over
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def buffer(self, size: int, device: str) -> list[Any]:
        return [None] * size  # the processor's output size is known once it has run

    def put(self, buffer: list[Any], slot: int, tensor: torch.Tensor) -> None:
        buffer[slot] = tensor

    def model_input(self, buffer: list[Any], slots: Sequence[int], device: str) -> torch.Tensor:
        import torch

        batch = torch.stack([buffer[slot] for slot in slots]).to(device)
        return batch.contiguous(memory_format=torch.channels_last)


class FastPreprocessor(Preprocessor):
    """Geometry on uint8 (CHW tensors in HWC memory); rescale + normalise in torch per slot.

    ``resize``: "torch" (antialiased ``interpolate``, for bilinear and bicubic filters) or
    "pillow" (two one-axis passes over the crop box, any filter).
    """

    def __init__(
        self, geometry: Geometry, scale: np.ndarray, shift: np.ndarray, resize: str = "pillow"
    ) -> None:
        if resize == "torch" and geometry.torch_mode is None:
            raise ValueError(f"torch cannot resize with Pillow filter {geometry.resample}")
        self.geometry = geometry
        self.resize = resize
        self.min_decode_side = geometry.min_decode_side
        # per channel, tiled over one pixel line (see _normalise)
        width = geometry.output[0]
        self.scale = np.tile(scale.astype(np.float32), width)
        self.shift = np.tile(shift.astype(np.float32), width)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, pixels: np.ndarray) -> torch.Tensor:
        return self.geometry.cropped(pixels, self.resize)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled for decode processes without its tensors on devices (a CUDA tensor would
        start CUDA in a process that only decodes)."""
        return {**self.__dict__, "_on_device": {}}

    def buffer(self, size: int, device: str) -> torch.Tensor:
        """(N, 3, H, W) channels_last of ``buffer_dtype``; off the CPU in pinned memory."""
        import torch

        width, height = self.geometry.output
        return torch.empty(
            (size, 3, height, width),
            dtype=self.buffer_dtype(device),
            memory_format=torch.channels_last,
            pin_memory=torch.device(device).type == "cuda",
        )

    @staticmethod
    def buffer_dtype(device: str) -> torch.dtype:
        """Float on the CPU, normalised slot by slot; off it uint8: the batch crosses in a
        quarter of the bytes and is normalised on the device."""
        import torch

        return torch.float32 if torch.device(device).type == "cpu" else torch.uint8

    def put(self, buffer: torch.Tensor, slot: int, tensor: torch.Tensor) -> None:
        """A straight copy (both HWC in memory), normalised in place when the slot is float.

        Worker threads run torch's ops alone (vision.threads.yield_to_inference): ~0.05 ms
        here, where numpy's cast and two passes took ~0.13.
        """
        target = buffer[slot]
        target.copy_(tensor)
        if target.is_floating_point():
            self._normalise(target)

    def model_input(
        self,
        buffer: torch.Tensor,
        slots: Sequence[int],
        device: str,
        placed: Mapping[int, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """As ``Preprocessor.model_input``; ``placed`` holds slots' uint8 crops already on
        ``device`` (images decoded there, ``apply_device``), which their buffer slots lack."""
        import torch

        if not placed:
            return self._from_buffer(buffer, slots, device)
        crops = torch.stack(list(placed.values())).contiguous(memory_format=torch.channels_last)
        crops = crops.float()
        self._normalise(crops)
        if list(placed) == list(slots):
            return crops
        position = {slot: i for i, slot in enumerate(slots)}
        pixels = torch.empty(
            (len(slots), *crops.shape[1:]), device=device, memory_format=torch.channels_last
        )

        def fill(at: Sequence[int], values: torch.Tensor) -> None:
            index = torch.tensor([position[slot] for slot in at], device=device)
            pixels.index_copy_(0, index, values)

        fill(list(placed), crops)
        host = [slot for slot in slots if slot not in placed]
        if host:
            fill(host, self._from_buffer(buffer, host, device))
        return pixels

    def _from_buffer(self, buffer: torch.Tensor, slots: Sequence[int], device: str) -> torch.Tensor:
        """The ``slots`` of ``buffer`` as normalised model input on ``device``."""
        import torch

        count = len(slots)
        if list(slots) == list(range(count)):
            pixels = buffer[:count]
        else:  # some objects of the batch could not be prepared: the others, compacted
            pixels = buffer[list(slots)].contiguous(memory_format=torch.channels_last)
        if pixels.is_floating_point():
            return pixels  # normalised slot by slot
        pixels = pixels.to(device, non_blocking=True).float()  # keeps channels_last
        self._normalise(pixels)
        return pixels

    def _normalise(self, pixels: torch.Tensor) -> None:
        """The per-channel affine in place, over whole pixel lines of HWC memory.

        torch broadcasts a per-channel (3,) vector over channels-innermost memory ~7x slower
        than a vector tiled over a pixel line.
        """
        import torch

        if pixels.device not in self._on_device:
            self._on_device[pixels.device] = (
                torch.from_numpy(self.scale).to(pixels.device),
                torch.from_numpy(self.shift).to(pixels.device),
            )
        scale, shift = self._on_device[pixels.device]
        lines = pixels.movedim(-3, -1).view(-1, scale.numel())  # raises unless a view
        torch.addcmul(shift, lines, scale, out=lines)


def affine_of(processor: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``scale, shift`` of the processor's value steps, measured on 0 and 255."""
    pixels = np.array([[[0, 0, 0], [255, 255, 255]]], dtype=np.uint8)
    values = processor(
        images=Image.fromarray(pixels),
        do_resize=False,
        do_center_crop=False,
        return_tensors="np",
    )["pixel_values"][0]  # (3, 1, 2)
    shift = values[:, 0, 0].astype(np.float64)
    return (values[:, 0, 1] - shift) / 255.0, shift


def reference_image(width: int = 331, height: int = 217) -> np.ndarray:
    """Deterministic RGB pixels with edges, gradients and noise, for the load-time check."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x ^ y) & 255], axis=-1)
    noisy = base + rng.integers(-40, 40, size=base.shape)
    return noisy.clip(0, 255).astype(np.uint8)


#: Sizes of the reference images: landscape, portrait, one above the usual input size, and one
#: tall enough that Pillow 13 resizes its height first.
REFERENCE_SIZES = ((331, 217), (217, 331), (640, 480), (300, 800))


def reference_batch(preprocessor: Preprocessor, device: str) -> torch.Tensor:
    """Model input for the reference images, for checks that need a realistic batch."""
    return preprocessor.collate(
        [preprocessor(reference_image(w, h)) for w, h in REFERENCE_SIZES], device
    )


def max_difference(a: Preprocessor, b: Preprocessor, pixels: np.ndarray) -> float:
    """Largest element-wise difference between two preprocessors' model input for ``pixels``."""
    return _largest_difference(a.collate([a(pixels)], "cpu"), b.collate([b(pixels)], "cpu"))


def _largest_difference(first: torch.Tensor, second: torch.Tensor) -> float:
    if first.shape != second.shape:
        return float("inf")
    return float((first - second).abs().max())


def _tolerance(scale: np.ndarray) -> float:
    """The largest difference from the processor that rounding explains, in model input units."""
    return _TOLERANCE_LEVELS * float(np.abs(scale).max()) + 1e-5


def reproduces_on_device(preprocessor: Preprocessor, processor: Any, device: str) -> bool:
    """Whether crops resized on ``device`` (``Geometry.apply_device``) reproduce ``processor``."""
    import torch

    if not isinstance(preprocessor, FastPreprocessor) or preprocessor.geometry.torch_mode is None:
        return False
    reference = ProcessorPreprocessor(processor)

    def resized_on_device(pixels: np.ndarray) -> torch.Tensor:
        image = torch.from_numpy(pixels).permute(2, 0, 1).to(device)
        return preprocessor.collate([preprocessor.geometry.apply_device(image).cpu()], "cpu")

    difference = max(
        _largest_difference(
            resized_on_device(pixels), reference.collate([reference(pixels)], "cpu")
        )
        for pixels in (reference_image(w, h) for w, h in REFERENCE_SIZES)
    )
    if difference > _tolerance(preprocessor.scale):
        log.info("resizing on %s differs by %.4g: decoding on the CPU", device, difference)
        return False
    return True


def build_preprocessor(processor: Any) -> Preprocessor:
    """The fast path when it reproduces ``processor`` (checked now), else the processor itself."""
    reference = ProcessorPreprocessor(processor)
    geometry = Geometry.of(processor)
    if geometry is None:
        log.info("%s: using the image processor as it is", type(processor).__name__)
        return reference
    try:
        scale, shift = affine_of(processor)
    except (TypeError, ValueError) as exc:
        log.info("%s: cannot calibrate the fast path (%s)", type(processor).__name__, exc)
        return reference
    tolerance = _tolerance(scale)
    for resize in ("torch", "pillow") if geometry.torch_mode else ("pillow",):
        fast = FastPreprocessor(geometry, scale, shift, resize)
        difference = max(
            max_difference(fast, reference, reference_image(w, h)) for w, h in REFERENCE_SIZES
        )
        if difference <= tolerance:
            return fast
        log.info(
            "%s: fast preprocessing resized by %s differs by %.4g (> %.4g)",
            type(processor).__name__,
            resize,
            difference,
            tolerance,
        )
    log.warning(
        "%s: no fast path reproduces it; using the image processor", type(processor).__name__
    )
    return reference
