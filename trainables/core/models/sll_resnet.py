"""The SLL residual network of the LBDN experiments: the input zero-padded to `channels`
channels and scaled by sqrt(gamma), `depth_conv` SLL convolution blocks, a 4 x 4 sum pooling
divided by 4 (1-Lipschitz), `depth_linear` SLL fully connected blocks, then the first `classes`
features scaled by sqrt(gamma) (or an LLN head on all of them). Sizes as the reference's
small / medium / large."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from trainables.core.data import DatasetInfo
from trainables.core.layers.sll import SllConv, SllFc
from trainables.core.models import MODELS
from trainables.core.models.lipschitz import (
    LIPSCHITZ_MODELS,
    LipschitzNet,
    NormalizedLinear,
    check_options,
    lbdn_center,
)

SIZES = {  # depth_conv, channels, inner conv channels, depth_linear, features
    "tiny": (3, 8, 4, 2, 64),  # not the reference's: for tests and first looks on a CPU
    "small": (20, 45, 5, 7, 2048),
    "medium": (30, 60, 5, 10, 2048),
    "large": (90, 60, 5, 15, 2048),
}


class PadChannels(nn.Module):
    """x scaled and zero-padded along dim 1 to `channels` channels (or features): norm-preserving
    times scale."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        self.channels = channels
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(self.scale * x, (0, 0) * (x.dim() - 2) + (0, self.channels - x.shape[1]))


class FirstFeatures(nn.Module):
    """The first `count` features, scaled: a projection times scale."""

    def __init__(self, count: int, scale: float) -> None:
        super().__init__()
        self.count = count
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * x[:, : self.count]


@MODELS.register("sll_resnet")
def sll_resnet(info: DatasetInfo, size: str = "small", gamma: float = 1.0, head: str = "plain",
               normalized: bool = False) -> nn.Module:
    """`size`: tiny | small | medium | large; `gamma`: the certified l2 bound after the input
    scaling; `head`: plain | lln; `normalized`: inputs divided by the per-channel std (LBDN's
    option; the bound in pixel units gains 1 / min std)."""
    check_options("sll_resnet", info.shape, 4, {"size": (size, tuple(SIZES)), "head": (head, ("plain", "lln")),
                                                "normalized": (normalized, (False, True))}, gamma)
    n = info.shape[1]
    depth_conv, channels, inner, depth_linear, features = SIZES[size]
    g = gamma ** 0.5
    flat = channels * (n // 4) ** 2
    layers = [lbdn_center(info, normalized), PadChannels(channels, g)]
    layers += [SllConv(channels, inner) for _ in range(depth_conv)]
    layers += [nn.AvgPool2d(4, divisor_override=4), nn.Flatten()]
    layers += [SllFc(flat, features) for _ in range(depth_linear)]
    if head == "lln":
        layers += [FirstFeatures(flat, g), NormalizedLinear(flat, info.num_classes)]
    else:
        layers.append(FirstFeatures(info.num_classes, g))
    return LipschitzNet(nn.Sequential(*layers), head, gamma, info.shape)


LIPSCHITZ_MODELS.add("sll_resnet")
