"""PGD adversarial training (kernel_reg): the model trains on adversarial examples only.

`pgd_l2`: start at 0, normalized-gradient steps (default 1.5 * epsilon / steps), l2-ball
projection. `pgd_linf`: uniform random start in the box, sign steps (default 0.01), clamp.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.attacks import LOSSES, pgd_l2, pgd_linf
from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param

CLIP = Param("bool", True, doc="keep x + delta in [0, 1] (the reference does not)")
STEPS = Param("int", 5, minimum=1, doc="PGD steps")
LOSS = Param("categorical", "ce", allowed=LOSSES,
             doc="what the attack ascends: cross-entropy, or the margins dlr (Croce & Hein) and cw")


@METHODS.register("pgd_l2")
class PgdL2(Method):
    families = ("kernel_reg",)
    params = {
        "epsilon": Param("float", 1.0, low=0.05, high=3.0, log=True, minimum=0.0, doc="l2 radius, pixel units"),
        "steps": STEPS,
        "step_size": Param("float", None, minimum=0.0, doc="None: 1.5 * epsilon / steps"),
        "clip": CLIP,
        "loss": LOSS,
    }
    source = "kernel_reg (--pgd_l2)"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        eps, steps = self.hp["epsilon"], self.hp["steps"]
        step = self.hp["step_size"] if self.hp["step_size"] is not None else 1.5 * eps / steps
        x_adv = pgd_l2(model, x, y, eps=eps, steps=steps, step_size=step, clip=self.hp["clip"], loss=self.hp["loss"])
        return F.cross_entropy(model(x_adv), y)


@METHODS.register("pgd_linf")
class PgdLinf(Method):
    families = ("kernel_reg",)
    params = {
        "epsilon": Param("float", 8 / 255, low=1 / 255, high=16 / 255, log=True, minimum=0.0,
                         doc="linf radius, pixel units"),
        "steps": STEPS,
        "step_size": Param("float", 0.01, minimum=0.0, doc="sign-step length"),
        "clip": CLIP,
        "loss": LOSS,
    }
    source = "kernel_reg (--pgd_linf)"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        x_adv = pgd_linf(model, x, y, eps=self.hp["epsilon"], steps=self.hp["steps"],
                         step_size=self.hp["step_size"], clip=self.hp["clip"], generator=ctx.generator,
                         loss=self.hp["loss"])
        return F.cross_entropy(model(x_adv), y)
