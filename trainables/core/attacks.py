"""White-box attacks on a model with inputs in [0, 1], shared by training methods and evaluation."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.registry import Registry


def per_example_norm(t: torch.Tensor) -> torch.Tensor:
    """The l2 norm of each example of a batch, shaped to broadcast against it."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def project_l2(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Each example's perturbation scaled back onto the l2 ball of radius eps if it left it."""
    return delta * (eps / per_example_norm(delta).clamp_min(eps))


def loss_gradient(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """grad of the summed cross-entropy with respect to the (perturbed) input."""
    x_adv = x_adv.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y, reduction="sum"), x_adv)
    return grad


def pgd_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    clip: bool = True,
) -> torch.Tensor:
    """Untargeted l2 PGD from delta = 0: normalized-gradient ascent on the cross-entropy, each
    step projected on the eps-ball (and onto [0, 1] pixels when `clip`). Returns x + delta."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        grad = loss_gradient(model, x + delta, y)
        delta = delta + step_size * grad / per_example_norm(grad).clamp_min(1e-12)
        delta = project_l2(delta, eps)
        if clip:
            delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    clip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted linf PGD: sign-gradient ascent steps, delta clamped to [-eps, eps] (and x + delta
    to [0, 1] when `clip`). With a `generator` it starts uniformly in the box (kernel_reg's
    training attack), without one from delta = 0 (deterministic evaluation)."""
    if generator is None:
        delta = torch.zeros_like(x)
    else:
        delta = eps * (2 * torch.rand(x.shape, generator=generator, device=x.device) - 1)
    for _ in range(steps):
        delta = (delta + step_size * loss_gradient(model, x + delta, y).sign()).clamp(-eps, eps)
        if clip:
            delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


ATTACKS: Registry = Registry("attack")
ATTACKS.register("pgd_l2")(pgd_l2)
ATTACKS.register("pgd_linf")(pgd_linf)
