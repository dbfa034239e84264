"""JPEGs decoded in batches on the model's GPU (nvJPEG, through torchvision), so that the CPU only
reads their headers; what nvJPEG cannot take exactly keeps the CPU path (decode_or_keep_jpeg).

Pure logic: no Dagster; torch and torchvision are imported only by the functions that need them.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from PIL import Image

from ai_assets.vision.decode import EncodedJpeg

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


@functools.cache
def nvjpeg_available(device: str) -> bool:
    """Whether ``device`` is a CUDA device on which torchvision decodes a JPEG (tried once)."""
    import torch

    if torch.device(device).type != "cuda":
        return False
    try:
        # CUDA machines only: torchvision's wheels are CUDA builds, which CPU torch cannot load
        from torchvision.io import decode_jpeg  # pyright: ignore[reportMissingImports]

        buffer = io.BytesIO()
        Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, "JPEG")
        encoded = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
        decode_jpeg([encoded], device=device)
    except Exception as exc:  # absent, built for another torch, no nvJPEG: the CPU decodes
        log.info("no JPEG decoding on %s: %s", device, exc)
        return False
    return True


def decode_jpegs(jpegs: Sequence[EncodedJpeg], device: str) -> list[torch.Tensor | None]:
    """Each JPEG's (3, H, W) uint8 pixels on ``device``; None where its decoder refused it.

    On CUDA one batched nvJPEG call (baseline JPEGs on the GPU's JPEG engines where it has
    them), then image by image if it refuses the batch, so one bad JPEG costs only its own slot.
    Elsewhere libjpeg-turbo on the CPU, moved to ``device``: what the tests run, with
    ``nvjpeg_available`` patched (never faster than the CPU path, so classifiers do not).
    """
    import torch

    if torch.device(device).type != "cuda":
        return [_turbo(jpeg, device) for jpeg in jpegs]
    from torchvision.io import ImageReadMode, decode_jpeg  # pyright: ignore[reportMissingImports]

    encoded = [torch.frombuffer(bytearray(jpeg.data), dtype=torch.uint8) for jpeg in jpegs]
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:  # one bad JPEG fails the batch: find it
        decoded: list[torch.Tensor | None] = []
        for data in encoded:
            try:
                decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                decoded.append(None)
        return decoded


def _turbo(jpeg: EncodedJpeg, device: str) -> torch.Tensor | None:
    import simplejpeg
    import torch

    try:
        pixels = simplejpeg.decode_jpeg(jpeg.data, "RGB")
    except ValueError:
        return None
    return torch.from_numpy(pixels).permute(2, 0, 1).to(device)
