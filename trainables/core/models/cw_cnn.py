"""The Carlini-Wagner CNN used by the SGR paper: conv-conv-pool-conv-conv-pool-FC-FC-logits."""

from __future__ import annotations

import torch
from torch import nn

from trainables.core.data import DatasetInfo
from trainables.core.models import MODELS, Normalize
from trainables.core.registry import ConfigError

CW_WIDTHS = {"mnist": (32, 32, 64, 64, 200, 200), "cifar": (64, 64, 128, 128, 256, 256)}


@MODELS.register("cw_cnn")
def cw_cnn(info: DatasetInfo, widths: str | list[int] = "mnist") -> nn.Module:
    """`widths`: `mnist` (32,32,64,64,200,200), `cifar` (64,64,128,128,256,256), or six ints."""
    if isinstance(widths, str):
        if widths not in CW_WIDTHS:
            raise ConfigError(f"model.widths: {widths!r} is not allowed; allowed: mnist, cifar, or six ints")
        widths = list(CW_WIDTHS[widths])
    if len(widths) != 6 or not all(isinstance(w, int) and w > 0 for w in widths):
        raise ConfigError(f"model.widths: expected six positive ints, got {widths!r}")
    c1, c2, c3, c4, f1, f2 = widths
    channels = info.shape[0]
    features = nn.Sequential(
        Normalize(info.mean, info.std),
        nn.Conv2d(channels, c1, 3), nn.ReLU(),
        nn.Conv2d(c1, c2, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3), nn.ReLU(),
        nn.Conv2d(c3, c4, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
    )
    with torch.no_grad():
        flat = features(torch.zeros(1, *info.shape)).shape[1]
    return nn.Sequential(
        features,
        nn.Linear(flat, f1), nn.ReLU(),
        nn.Linear(f1, f2), nn.ReLU(),
        nn.Linear(f2, info.num_classes),
    )
