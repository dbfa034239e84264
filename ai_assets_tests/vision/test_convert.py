"""The converted EfficientNet-Lite0 is the original network, and it labels real photos."""

import pytest
import torch
from PIL import Image

from ai_assets.vision.convert import build_config, map_key, source_weights_path
from ai_assets.vision.decode import decode_image
from ai_assets.vision.model import load_classifier
from ai_assets_dev.samples import encode
from ai_assets_tests.support.util import CAT_CLASSES


def test_key_mapping() -> None:
    assert map_key("_conv_stem.weight") == "efficientnet.embeddings.convolution.weight"
    assert map_key("_blocks.3._bn1.running_var") == (
        "efficientnet.encoder.blocks.3.depthwise_conv.depthwise_norm.running_var"
    )
    assert map_key("_fc.bias") == "classifier.bias"
    with pytest.raises(KeyError):
        map_key("_blocks.0._se_reduce.weight")


def test_logits_match_the_original_model(lite0_dir: str, jpegs: dict[str, bytes]) -> None:
    from efficientnet_lite_pytorch import EfficientNet

    original = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(source_weights_path())
    ).eval()
    classifier = load_classifier(lite0_dir, "cpu")
    batch = classifier.preprocessor.collate(
        [
            classifier.preprocess(decode_image(jpegs[name]))
            for name in ("chelsea", "coffee", "china")
        ],
        "cpu",
    )
    with torch.inference_mode():
        expected = original(batch)
        actual = classifier.model(pixel_values=batch).logits
    assert actual.shape == (3, 1000)
    assert torch.allclose(actual, expected, atol=1e-4, rtol=0)


def test_real_photos_get_the_right_labels(lite0_dir: str, jpegs: dict[str, bytes]) -> None:
    classifier = load_classifier(lite0_dir, "cpu")
    pixels = [classifier.preprocess(decode_image(jpegs[name])) for name in ("chelsea", "coffee")]
    chelsea, coffee = classifier.predict(pixels, top_k=3)
    label2id = build_config().label2id
    assert CAT_CLASSES & {label2id[p.label] for p in chelsea}
    assert coffee[0].label == "espresso"
    assert classifier.model_revision.startswith("sha256:")


def test_draft_decoding_keeps_the_labels_of_a_large_photo(
    lite0_dir: str, jpegs: dict[str, bytes]
) -> None:
    classifier = load_classifier(lite0_dir, "cpu")
    large = Image.fromarray(decode_image(jpegs["coffee"]))
    data = encode(large.resize((2400, 1600), Image.Resampling.LANCZOS))
    drafted = classifier.decode(data)
    assert drafted.shape == (800, 1200, 3)  # decoded at 1/2 scale: both sides still >= 2 x 256
    full, draft = (
        classifier.predict([classifier.preprocess(image)], top_k=1)[0][0].label
        for image in (decode_image(data), drafted)
    )
    assert full == draft == "espresso"


def test_the_pipeline_loads_the_directory_offline(lite0_dir: str, jpegs: dict[str, bytes]) -> None:
    from transformers import pipeline

    classify = pipeline("image-classification", model=lite0_dir)
    coffee = Image.fromarray(decode_image(jpegs["coffee"]))
    assert classify(coffee, top_k=1)[0]["label"] == "espresso"
