"""BatchNorm folding: same output, fewer layers; anything it cannot prove equal is undone."""

import logging

import pytest
import torch
from torch import nn

from ai_assets.vision.fold import fold_batch_norms


def _randomise_statistics(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            channels = module.num_features
            module.running_mean.copy_(torch.randn(channels, generator=generator))  # type: ignore[union-attr]
            module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)  # type: ignore[union-attr]
            module.weight.data.copy_(torch.randn(channels, generator=generator))
            module.bias.data.copy_(torch.randn(channels, generator=generator))
    return model.eval()


class ConvBlock(nn.Module):
    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.head = nn.Conv2d(8, 4, 1)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.conv(x)
        out = self.act(self.norm(features))
        if self.residual:  # the conv's output feeds a second consumer: folding would change it
            out = out + features
        return self.head(out).mean(dim=(2, 3))


class SharedConv(nn.Module):
    """One conv applied twice, each time followed by a different BatchNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.first, self.second = nn.BatchNorm2d(3), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.conv(self.first(self.conv(x)))).mean(dim=(2, 3))


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))


def _output(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(batch)


def test_conv_batchnorm_pairs_fold_and_activations_run_in_place(batch) -> None:
    model = _randomise_statistics(ConvBlock())
    before = _output(model, batch)
    assert fold_batch_norms(model, lambda: model(batch)) == 1
    assert isinstance(model.norm, nn.Identity) and model.conv.bias is not None
    assert model.act.inplace
    torch.testing.assert_close(_output(model, batch), before, rtol=1e-5, atol=1e-5)


def test_a_conv_output_with_a_second_consumer_is_rolled_back(batch, caplog) -> None:
    model = _randomise_statistics(ConvBlock(residual=True))
    conv, norm, act = model.conv, model.norm, model.act
    before = _output(model, batch)
    with caplog.at_level(logging.WARNING, "ai_assets.vision.fold"):
        assert fold_batch_norms(model, lambda: model(batch)) == 0
    assert "left unfolded" in caplog.text
    assert (model.conv, model.norm, model.act) == (conv, norm, act) and not act.inplace
    assert torch.equal(_output(model, batch), before)


def test_a_conv_called_twice_is_left_alone(batch) -> None:
    model = _randomise_statistics(SharedConv())
    before = _output(model, batch)
    assert fold_batch_norms(model, lambda: model(batch)) == 0
    assert isinstance(model.first, nn.BatchNorm2d) and isinstance(model.second, nn.BatchNorm2d)
    assert torch.equal(_output(model, batch), before)


def test_a_model_without_batchnorm_is_untouched(tiny_model_dir: str) -> None:
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(tiny_model_dir).eval()
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    modules = list(model.modules())
    assert fold_batch_norms(model, lambda: model(pixel_values=pixels).logits) == 0
    assert list(model.modules()) == modules


def test_a_transformers_efficientnet_folds_every_batchnorm() -> None:
    """A small randomly initialised EfficientNet: the bundled model's layer types, in seconds."""
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    torch.manual_seed(0)
    config = EfficientNetConfig(
        image_size=32, width_coefficient=0.25, depth_coefficient=0.2, hidden_dim=320,
        hidden_act="relu6", depthwise_padding=[], num_labels=5,
    )  # fmt: skip
    model = _randomise_statistics(EfficientNetForImageClassification(config))
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    before = _output(model, pixels)

    def forward() -> torch.Tensor:
        return model(pixel_values=pixels).logits

    assert fold_batch_norms(model, forward) == norms > 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(getattr(m, "inplace", False) for m in model.modules())
    torch.testing.assert_close(_output(model, pixels).logits, before.logits, rtol=1e-4, atol=1e-4)
