"""A fully connected ReLU network on the flattened image."""

from __future__ import annotations

import math

from torch import nn

from trainables.core.data import DatasetInfo
from trainables.core.models import MODELS, Normalize
from trainables.core.registry import ConfigError


@MODELS.register("mlp")
def mlp(info: DatasetInfo, hidden: list[int] | None = None) -> nn.Module:
    """`hidden`: the widths of the hidden layers (default [256, 256])."""
    hidden = [256, 256] if hidden is None else hidden
    if not isinstance(hidden, list) or not all(isinstance(h, int) and h > 0 for h in hidden):
        raise ConfigError(f"model.hidden: expected a list of positive ints, got {hidden!r}")
    layers: list[nn.Module] = [Normalize(info.mean, info.std), nn.Flatten()]
    width = math.prod(info.shape)
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, info.num_classes))
    return nn.Sequential(*layers)
