"""Adversarial training on a clean + adversarial mixture, the SGR paper's baselines:
loss = (1 - mix) * CE(f(x), y) + mix * CE(f(x_adv), y). The examples are crafted against the
model's own predictions, not the labels, to avoid label leaking (Kurakin et al. 2016), as the
paper does."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.attacks import fgsm, pgd_l2, pgd_linf
from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param

MIX = Param("float", 0.5, low=0.1, high=0.9, minimum=0.0, maximum=1.0, doc="weight of the adversarial loss")
EPSILON = Param("float", 0.1, low=0.01, high=0.3, log=True, minimum=0.0, doc="linf radius (l2 with norm: l2)")


class AdversarialMixture(Method):
    """Subclasses craft the adversarial batch."""
    families = ("sgr",)

    def adversarial(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        logits = model(x)
        x_adv = self.adversarial(model, x, logits.detach().argmax(1), ctx)
        mix = self.hp["mix"]
        return (1 - mix) * F.cross_entropy(logits, y) + mix * F.cross_entropy(model(x_adv), y)


@METHODS.register("fgsm_at")
class FgsmTraining(AdversarialMixture):
    params = {"epsilon": EPSILON, "mix": MIX}
    source = "sgr (FGSM-augmented baseline)"

    def adversarial(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        return fgsm(model, x, labels, eps=self.hp["epsilon"])


@METHODS.register("pgd_at")
class PgdTraining(AdversarialMixture):
    params = {
        "epsilon": EPSILON,
        "steps": Param("int", 7, minimum=1, doc="PGD steps"),
        "step_size": Param("float", None, minimum=0.0, doc="None: 2.5 * epsilon / steps"),
        "norm": Param("categorical", "linf", allowed=("linf", "l2"),
                      doc="linf: random start, sign steps; l2: from 0, normalized steps"),
        "mix": MIX,
    }
    source = "sgr (PGD-augmented baseline)"

    def adversarial(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        eps, steps = self.hp["epsilon"], self.hp["steps"]
        step = self.hp["step_size"] if self.hp["step_size"] is not None else 2.5 * eps / steps
        if self.hp["norm"] == "l2":
            return pgd_l2(model, x, labels, eps=eps, steps=steps, step_size=step)
        return pgd_linf(model, x, labels, eps=eps, steps=steps, step_size=step, generator=ctx.generator)
