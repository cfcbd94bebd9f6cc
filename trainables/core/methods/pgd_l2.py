"""`pgd_l2`: adversarial training on l2 PGD examples only (kernel_reg): start at 0,
normalized-gradient steps of 1.5 * epsilon / steps, projection on the l2 ball."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.attacks import pgd_l2
from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param


@METHODS.register("pgd_l2")
class PgdL2(Method):
    params = {
        "epsilon": Param("float", 1.0, low=0.05, high=3.0, log=True, minimum=0.0,
                         doc="l2 radius, pixel units"),
        "steps": Param("int", 5, minimum=1, doc="PGD steps"),
        "clip": Param("bool", True, doc="keep x + delta in [0, 1] (the reference does not)"),
    }
    source = "kernel_reg (--pgd_l2)"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        eps, steps = self.hp["epsilon"], self.hp["steps"]
        x_adv = pgd_l2(model, x, y, eps=eps, steps=steps, step_size=1.5 * eps / steps,
                       clip=self.hp["clip"])
        return F.cross_entropy(model(x_adv), y)
