"""`adv_perturbation_penalty` (||f||_delta^2, kernel_reg): a lower bound on the RKHS norm.

The batch is replicated once per class k with perturbations delta_{k,i} from 0; `steps`
normalized-gradient ascent steps (1.5 * epsilon / steps) on sum_k sum_i f_k(x_i + delta_{k,i}),
each projected on the l2 ball. For each class only the example with the largest gain
f_k(x_i + delta_{k,i}) - f_k(x_i) is kept; the penalty is the sum over classes of that gain
squared, delta fixed, gradients through both terms. Added (times lambda, default 1, as in the
reference) to the cross-entropy.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.attacks import per_example_norm, project_l2
from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param


def per_class_outputs(model: nn.Module, x_copies: torch.Tensor, n: int) -> torch.Tensor:
    """sum over copies k and examples i of f_k(copy k of x_i): copy k carries class k's objective."""
    k = x_copies.shape[0] // n
    logits = model(x_copies).view(k, n, -1)
    return logits.diagonal(dim1=0, dim2=2).sum()


def class_ascent(model: nn.Module, x: torch.Tensor, num_classes: int, eps: float, steps: int) -> torch.Tensor:
    """delta_{k,i} (K x n x ...) after the ascent on each copy's own class output."""
    n = x.shape[0]
    deltas = torch.zeros(num_classes * n, *x.shape[1:], device=x.device, dtype=x.dtype)
    base = x.detach().repeat(num_classes, *([1] * (x.dim() - 1)))
    step_size = 1.5 * eps / steps
    for _ in range(steps):
        deltas.requires_grad_(True)
        (grad,) = torch.autograd.grad(per_class_outputs(model, base + deltas, n), deltas)
        deltas = deltas.detach() + step_size * grad / per_example_norm(grad).clamp_min(1e-12)
        deltas = project_l2(deltas, eps)
    return deltas.view(num_classes, n, *x.shape[1:])


def perturbation_penalty(model: nn.Module, x: torch.Tensor, num_classes: int, eps: float, steps: int) -> torch.Tensor:
    """sum_k max_i (f_k(x_i + delta_{k,i}) - f_k(x_i))^2 at the ascent's deltas."""
    deltas = class_ascent(model, x, num_classes, eps, steps)
    classes = torch.arange(num_classes, device=x.device)
    with torch.no_grad():
        n = x.shape[0]
        perturbed = model((x.unsqueeze(0) + deltas).flatten(0, 1)).view(num_classes, n, -1)
        gains = perturbed.diagonal(dim1=0, dim2=2).T - model(x).T  # [k, i]
        chosen = gains.argmax(dim=1)
    x_chosen = x[chosen]
    diff = model(x_chosen + deltas[classes, chosen]) - model(x_chosen)
    return diff.diagonal().pow(2).sum()


@METHODS.register("adv_perturbation_penalty")
class AdvPerturbationPenalty(Method):
    families = ("kernel_reg",)
    params = {
        "epsilon": Param("float", 0.1, low=0.05, high=3.0, log=True, minimum=0.0, doc="l2 radius, pixel units"),
        "steps": Param("int", 5, minimum=1, doc="ascent steps"),
        "lambda": Param("float", 1.0, minimum=0.0, doc="penalty weight (the reference has none: 1)"),
    }
    source = "kernel_reg (--reg_adv_perturbation): ||f||_delta^2"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        logits = model(x)
        penalty = perturbation_penalty(model, x, logits.shape[1], self.hp["epsilon"], self.hp["steps"])
        return F.cross_entropy(logits, y) + self.hp["lambda"] * penalty
