"""`lrc_augment`: the SGR paper's noise baseline, training on inputs augmented with long-range
correlated Gaussian noise (covariance exp(-r / zeta) within a channel, half that across), each
draw scaled to l2 norm epsilon: loss = (1 - mix) * CE(f(x), y) + mix * CE(f(clip(x + noise)), y)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.covariance import LrcNoise
from trainables.core.data import DataBundle
from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param


@METHODS.register("lrc_augment")
class LrcAugment(Method):
    families = ("sgr",)
    params = {
        "zeta": Param("float", 4.0, choices=(1.0, 2.0, 4.0, 8.0, 16.0), minimum=0.01, doc="decay length, pixels"),
        "epsilon": Param("float", 2.0, low=0.25, high=8.0, log=True, minimum=0.0, doc="l2 norm of each draw"),
        "mix": Param("float", 0.5, minimum=0.0, maximum=1.0, doc="weight of the noisy loss"),
    }
    source = "sgr (LRC-noise-augmented baseline)"

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.noise: LrcNoise | None = None

    def setup(self, data: DataBundle) -> None:
        self.noise = LrcNoise(data.info.shape, self.hp["zeta"], data.train_x.device)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.noise is None:
            self.noise = LrcNoise(tuple(x.shape[1:]), self.hp["zeta"], x.device)
        noisy = (x + self.noise.sample_scaled(len(x), self.hp["epsilon"], ctx.generator).to(x.dtype)).clamp(0.0, 1.0)
        mix = self.hp["mix"]
        return (1 - mix) * F.cross_entropy(model(x), y) + mix * F.cross_entropy(model(noisy), y)
