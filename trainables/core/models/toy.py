"""The LBDN toy network for the one-dimensional square_wave fit: 10 fully connected layers of
width 86 (Sandwich) or 128 (the others), sqrt(gamma) on the first and the last; SLL as
zero-padding to the width, 8 residual layers and the first output; Plain unconstrained."""

from __future__ import annotations

from torch import nn

from trainables.core.data import DatasetInfo
from trainables.core.layers import LAYERS
from trainables.core.layers.sll import SllFc
from trainables.core.models import MODELS
from trainables.core.models.lipschitz import LIPSCHITZ_MODELS, Center, LipschitzNet
from trainables.core.models.sll_resnet import FirstFeatures, PadChannels

DEPTH = 10


@MODELS.register("toy")
def toy(info: DatasetInfo, layer: str = "sandwich", gamma: float = 1.0) -> nn.Module:
    """`layer`: a layer family or sll; `gamma`: the l2 bound (ignored by plain)."""
    inputs, outputs = 1, info.num_classes
    for size in info.shape:
        inputs *= size
    layers: list[nn.Module] = [Center(info.mean), nn.Flatten()]
    if layer == "sll":
        width = 128
        layers.append(PadChannels(width, gamma ** 0.5))
        layers += [SllFc(width, width) for _ in range(DEPTH - 2)]
        layers.append(FirstFeatures(outputs, gamma ** 0.5))
        return LipschitzNet(nn.Sequential(*layers), "plain", gamma, info.shape)
    family = LAYERS.get(layer, "model.layer")
    width = 86 if layer == "sandwich" else 128
    g = gamma ** 0.5 if family.certified else 1.0
    layers.append(family.fc(inputs, width, g))
    layers += [family.fc(width, width, 1.0) for _ in range(DEPTH - 2)]
    layers.append(family.lin(width, outputs, g))
    return LipschitzNet(nn.Sequential(*layers), "plain", gamma if family.certified else None, info.shape)


LIPSCHITZ_MODELS.add("toy")
