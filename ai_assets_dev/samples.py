"""Real sample photos that ship inside PyPI packages (scikit-image, scikit-learn), as JPEG bytes.

Used by the demo, the tests and the benchmarks; extracted at run time, never committed.
"""

from __future__ import annotations

import io

from PIL import Image


def sample_images() -> dict[str, Image.Image]:
    """name → RGB image: chelsea, coffee, astronaut, rocket, camera, china, flower."""
    from skimage import data
    from sklearn.datasets import load_sample_images

    images = {name: getattr(data, name)() for name in ("chelsea", "coffee", "astronaut", "rocket")}
    images["camera"] = data.camera()
    sklearn = load_sample_images()
    for filename, array in zip(sklearn.filenames, sklearn.images, strict=True):
        images[filename.rsplit("/", 1)[-1].removesuffix(".jpg")] = array
    return {name: Image.fromarray(array).convert("RGB") for name, array in images.items()}


def encode(image: Image.Image, format: str = "JPEG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": 90} if format == "JPEG" else {}) | options)
    return buffer.getvalue()


def sample_jpegs() -> dict[str, bytes]:
    return {name: encode(image) for name, image in sample_images().items()}
