"""VGG-11 without batch norm, as in kernel_reg (conv init N(0, sqrt(2 / (k * k * out))), bias 0).

Pools use ceil mode so 28 x 28 inputs also reach a 1 x 1 map; at 32 x 32 it equals floor mode.
"""

from __future__ import annotations

import math

from torch import nn

from trainables.core.data import DatasetInfo
from trainables.core.models import MODELS, Normalize
from trainables.core.models.references import KERNEL_REG, reference_stats

VGG11 = (64, "P", 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")


@MODELS.register("vgg11")
def vgg11(info: DatasetInfo) -> nn.Module:
    layers: list[nn.Module] = [Normalize(*reference_stats(info, KERNEL_REG))]
    channels = info.shape[0]
    for item in VGG11:
        if item == "P":
            layers.append(nn.MaxPool2d(2, ceil_mode=True))
            continue
        conv = nn.Conv2d(channels, item, 3, padding=1)
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (3 * 3 * item)))
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU()]
        channels = item
    layers += [
        nn.Flatten(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, 512), nn.ReLU(),
        nn.Linear(512, info.num_classes),
    ]
    return nn.Sequential(*layers)
