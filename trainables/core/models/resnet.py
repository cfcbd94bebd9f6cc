"""CIFAR ResNet-18 without batch norm, as in kernel_reg: bias-free convs, [2, 2, 2, 2] basic
blocks, global average pool (the reference's 4 x 4 pool at 32 x 32 inputs), Linear 512 -> classes."""

from __future__ import annotations

import torch
from torch import nn

from trainables.core.data import DatasetInfo
from trainables.core.models import MODELS, Normalize
from trainables.core.models.references import KERNEL_REG, reference_stats


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = (
            nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(x))
        return torch.relu(self.conv2(out) + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, info: DatasetInfo) -> None:
        super().__init__()
        self.normalize = Normalize(*reference_stats(info, KERNEL_REG))
        self.conv1 = nn.Conv2d(info.shape[0], 64, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        in_planes = 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            for block_stride in (stride, 1):
                blocks.append(BasicBlock(in_planes, planes, block_stride))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(512, info.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.conv1(self.normalize(x)))
        out = self.blocks(out)
        out = nn.functional.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@MODELS.register("resnet18")
def resnet18(info: DatasetInfo) -> nn.Module:
    return ResNet18(info)
