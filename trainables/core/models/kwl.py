"""The KWL convolutional network of the LBDN experiments, in any registered layer family:
conv 32w, conv 32w stride 2, conv 64w, conv 64w stride 2, FC (640w, or 512w for Sandwich),
FC 512w, classes; w = 1 / 2 / 4 for small / medium / large. A family whose convolutions have
stride 1 (AOL) downsamples as the reference's AOL network: four stride-1 convolutions, then a
4 x 4 sum pooling divided by 4. sqrt(gamma) scales the first and
the last layer, so the network is gamma-Lipschitz in l2 (pixel units); an `lln` head normalizes
the last layer's rows instead (the scale moves to the layer before it)."""

from __future__ import annotations

from torch import nn

from trainables.core.data import DatasetInfo
from trainables.core.layers import LAYERS
from trainables.core.models import MODELS
from trainables.core.models.lipschitz import (
    LIPSCHITZ_MODELS,
    LipschitzNet,
    NormalizedLinear,
    check_options,
    lbdn_center,
)

WIDTHS = {"small": 1, "medium": 2, "large": 4}


@MODELS.register("kwl")
def kwl(info: DatasetInfo, layer: str = "sandwich", size: str = "small", gamma: float = 1.0,
        head: str = "plain", normalized: bool = False) -> nn.Module:
    """`layer`: a layer family; `size`: small | medium | large; `gamma`: the certified l2
    Lipschitz bound of the network after its input scaling (ignored by `plain`, whose bound is
    measured); `head`: plain | lln; `normalized`: LBDN's option, inputs divided by the data
    set's per-channel std inside the model (the bound in pixel units gains 1 / min std)."""
    family = LAYERS.get(layer, "model.layer")
    check_options("kwl", info.shape, 4, {"size": (size, tuple(WIDTHS)), "head": (head, ("plain", "lln")),
                                       "normalized": (normalized, (False, True))}, gamma)
    channels, n, _ = info.shape
    w, g = WIDTHS[size], gamma ** 0.5 if family.certified else 1.0
    lln = head == "lln"
    if family.downsample == "pool":
        convolutions = [family.conv(channels, 32 * w, n, 1, g), family.conv(32 * w, 32 * w, n, 1, 1.0),
                        family.conv(32 * w, 64 * w, n, 1, 1.0), family.conv(64 * w, 64 * w, n, 1, 1.0),
                        nn.AvgPool2d(4, divisor_override=4)]
    else:
        convolutions = [family.conv(channels, 32 * w, n, 1, g), family.conv(32 * w, 32 * w, n, 2, 1.0),
                        family.conv(32 * w, 64 * w, n // 2, 1, 1.0), family.conv(64 * w, 64 * w, n // 2, 2, 1.0)]
    layers = [
        lbdn_center(info, normalized),
        *convolutions,
        nn.Flatten(),
        family.fc(64 * w * (n // 4) ** 2, family.fc_width * w, 1.0),
        family.fc(family.fc_width * w, 512 * w, g if lln else 1.0),
        NormalizedLinear(512 * w, info.num_classes) if lln else family.lin(512 * w, info.num_classes, g),
    ]
    return LipschitzNet(nn.Sequential(*layers), head, gamma if family.certified else None, info.shape)


LIPSCHITZ_MODELS.add("kwl")
