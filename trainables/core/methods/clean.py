"""`clean`: cross-entropy on clean inputs, with weight decay as its hyperparameter."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param


@METHODS.register("clean")
class Clean(Method):
    families = ("kernel_reg", "sgr")
    params = {
        "weight_decay": Param("float", 0.0, low=1e-6, high=1e-2, log=True, minimum=0.0,
                              doc="optimizer weight decay (L2)"),
    }
    source = "kernel_reg (clean), sgr (weight-decay baseline)"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return F.cross_entropy(model(x), y)

    def optimizer_weight_decay(self) -> float:
        return self.hp["weight_decay"]
