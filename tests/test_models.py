"""Models by name: shapes, the reference architectures' parameter counts, normalization inside."""

from __future__ import annotations

import pytest
import torch

from trainables.core.data import DatasetInfo
from trainables.core.data.cifar import CIFAR10_INFO
from trainables.core.models import ModelConfig, Normalize, build_model
from trainables.core.registry import ConfigError

FASHION = DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,))


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("info", [FASHION, CIFAR10_INFO], ids=["28x28x1", "32x32x3"])
@pytest.mark.parametrize("name", ["cw_cnn", "vgg11", "resnet18", "mlp"])
def test_every_model_maps_images_to_logits(name: str, info: DatasetInfo) -> None:
    model = build_model(ModelConfig(name), info)
    assert model(torch.rand(3, *info.shape)).shape == (3, info.num_classes)


def test_cw_cnn_has_the_carlini_wagner_layer_sizes() -> None:
    # conv 32, 32, pool, 64, 64, pool, FC 200, 200, 10 on 28 x 28: 4 x 4 x 64 = 1024 features
    expected = (9 * 32 + 32) + (9 * 32 * 32 + 32) + (9 * 32 * 64 + 64) + (9 * 64 * 64 + 64) \
        + (1024 * 200 + 200) + (200 * 200 + 200) + (200 * 10 + 10)
    assert n_params(build_model(ModelConfig("cw_cnn", {"widths": "mnist"}), FASHION)) == expected
    cifar = build_model(ModelConfig("cw_cnn", {"widths": "cifar"}), CIFAR10_INFO)
    assert cifar[1].in_features == 128 * 5 * 5


def test_vgg11_matches_the_reference_without_batch_norm() -> None:
    convs = [(3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    expected = sum(9 * i * o + o for i, o in convs) + 2 * (512 * 512 + 512) + 512 * 10 + 10
    model = build_model(ModelConfig("vgg11"), CIFAR10_INFO)
    assert n_params(model) == expected
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_resnet18_has_no_batch_norm_and_bias_free_convs() -> None:
    model = build_model(ModelConfig("resnet18"), CIFAR10_INFO)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3 and all(c.bias is None for c in convs)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_normalization_is_inside_the_model() -> None:
    norm = Normalize((0.5, 0.25), (0.5, 2.0))
    x = torch.rand(2, 2, 3, 3)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 2.0], dim=1)
    torch.testing.assert_close(norm(x), expected)
    model = build_model(ModelConfig("mlp", {"hidden": [8]}), FASHION)
    assert isinstance(model[0], Normalize)


def test_unknown_model_option_names_the_allowed_ones() -> None:
    with pytest.raises(ConfigError, match=r"model.depth: unknown option of model 'cw_cnn'; allowed: widths"):
        ModelConfig.from_mapping({"name": "cw_cnn", "depth": 3}, "model")
    with pytest.raises(ConfigError, match="model.widths"):
        build_model(ModelConfig("cw_cnn", {"widths": "imagenet"}), FASHION)
