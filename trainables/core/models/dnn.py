"""The LBDN certification network (DNN): Sandwich convolutions 64, 64 s2, 128, 128 s2, 256,
256 s2 (and 512, 512 s2 for 64 x 64 inputs), Sandwich FC 2048, 2048, 1024, then an LLN head
(or a Sandwich last layer with `head: plain`); sqrt(gamma) on the first layer and on the 1024
layer (the last one with a plain head)."""

from __future__ import annotations

from torch import nn

from trainables.core.data import DatasetInfo
from trainables.core.layers.sandwich import SandwichConv, SandwichFc, SandwichLin
from trainables.core.models import MODELS
from trainables.core.models.lipschitz import (
    LIPSCHITZ_MODELS,
    LipschitzNet,
    NormalizedLinear,
    check_options,
    lbdn_center,
)


@MODELS.register("dnn")
def dnn(info: DatasetInfo, gamma: float = 1.0, head: str = "lln", normalized: bool = False) -> nn.Module:
    """`gamma`: the certified l2 bound after the input scaling; `head`: lln (the reference's) |
    plain; `normalized`: inputs divided by the per-channel std (LBDN's option; the bound in
    pixel units gains 1 / min std)."""
    channels, n, _ = info.shape
    widths = [64, 128, 256] + ([512] if n >= 64 else [])
    check_options("dnn", info.shape, 2 ** len(widths), {"head": (head, ("lln", "plain")),
                                                                 "normalized": (normalized, (False, True))}, gamma)
    g = gamma ** 0.5
    layers: list[nn.Module] = [lbdn_center(info, normalized)]
    cin, size = channels, n
    for i, width in enumerate(widths):
        layers += [SandwichConv(cin, width, size, 1, g if i == 0 else 1.0), SandwichConv(width, width, size, 2)]
        cin, size = width, size // 2
    layers += [nn.Flatten(), SandwichFc(cin * size * size, 2048), SandwichFc(2048, 2048)]
    if head == "lln":
        layers += [SandwichFc(2048, 1024, g), NormalizedLinear(1024, info.num_classes)]
    else:
        layers += [SandwichFc(2048, 1024), SandwichLin(1024, info.num_classes, g)]
    return LipschitzNet(nn.Sequential(*layers), head, gamma, info.shape)


LIPSCHITZ_MODELS.add("dnn")
