"""`loss_gradl2`: cross-entropy plus lambda * ||grad_x sum_i CE(f(x_i), y_i)||_2^2 / n, with
double backprop (kernel_reg's grad-l2 penalty on the loss)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param


def loss_gradient_penalty(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy, ||grad_x of the summed cross-entropy||_2^2 / n), both differentiable."""
    x = x.detach().requires_grad_(True)
    losses = F.cross_entropy(model(x), y, reduction="none")
    (grad,) = torch.autograd.grad(losses.sum(), x, create_graph=True)
    return losses.mean(), grad.pow(2).sum() / x.shape[0]


@METHODS.register("loss_gradl2")
class LossGradL2(Method):
    params = {
        "lambda": Param("float", 0.1, low=1e-3, high=10.0, log=True, minimum=0.0, doc="penalty weight"),
    }
    source = "kernel_reg (--reg_loss_gradl2)"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        ce, penalty = loss_gradient_penalty(model, x, y)
        return ce + self.hp["lambda"] * penalty
