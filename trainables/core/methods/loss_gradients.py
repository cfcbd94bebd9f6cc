"""Penalties on the input gradient of the loss (kernel_reg's grad-l2 and grad-l1):
g = grad_x sum_i CE(f(x_i), y_i) on clean inputs, with double backprop;
`loss_gradl2` adds lambda * ||g||_2^2 / n, `loss_gradl1` adds lambda * ||g||_1 / n."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param

LAMBDA = Param("float", 0.1, low=1e-3, high=10.0, log=True, minimum=0.0, doc="penalty weight")


def loss_and_input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, grad_x of the summed cross-entropy), both differentiable."""
    x = x.detach().requires_grad_(True)
    losses = F.cross_entropy(model(x), y, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), x, create_graph=True)
    return losses.mean(), grad


class LossGradientPenalty(Method):
    """CE + lambda * norm(g) / n; subclasses say which norm."""
    families = ("kernel_reg",)

    params = {"lambda": LAMBDA}
    double_backprop = True

    def norm(self, grad: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        ce, grad = loss_and_input_gradient(model, x, y)
        return ce + self.hp["lambda"] * self.norm(grad) / x.shape[0]


@METHODS.register("loss_gradl2")
class LossGradL2(LossGradientPenalty):
    source = "kernel_reg (--reg_loss_gradl2)"

    def norm(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.pow(2).sum()


@METHODS.register("loss_gradl1")
class LossGradL1(LossGradientPenalty):
    source = "kernel_reg (--reg_loss_gradl1)"

    def norm(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.abs().sum()
