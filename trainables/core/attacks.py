"""Attacks on a model with inputs in [0, 1], shared by training methods and evaluation: l2 and
linf PGD (untargeted, or targeted at given classes), their one-step forms FGM and FGSM,
DeepFool's minimal l2 perturbation, and random noise."""

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


def ascent_direction(
    model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None
) -> torch.Tensor:
    """Where the loss of an attack grows: up the cross-entropy of the true labels (untargeted),
    or down the cross-entropy of the `target` classes (targeted)."""
    if target is None:
        return loss_gradient(model, x_adv, y)
    return -loss_gradient(model, x_adv, target)


def pgd_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    clip: bool = True,
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """l2 PGD from delta = 0: normalized-gradient ascent on the cross-entropy (of `target` when
    given: targeted), each step projected on the eps-ball (and onto [0, 1] pixels when `clip`).
    Returns x + delta."""
    delta = torch.zeros_like(x)
    for _ in range(steps):
        grad = ascent_direction(model, x + delta, y, target)
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
    target: torch.Tensor | None = None,
) -> torch.Tensor:
    """linf PGD: sign-gradient ascent steps (targeted at `target` when given), delta clamped to
    [-eps, eps] (and x + delta to [0, 1] when `clip`). With a `generator` it starts uniformly in
    the box (kernel_reg's training attack), without one from delta = 0 (deterministic evaluation)."""
    if generator is None:
        delta = torch.zeros_like(x)
    else:
        delta = eps * (2 * torch.rand(x.shape, generator=generator, device=x.device) - 1)
    for _ in range(steps):
        delta = (delta + step_size * ascent_direction(model, x + delta, y, target).sign()).clamp(-eps, eps)
        if clip:
            delta = (x + delta).clamp(0.0, 1.0) - x
    return (x + delta).detach()


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, clip: bool = True,
         target: torch.Tensor | None = None) -> torch.Tensor:
    """Fast gradient sign method: one linf step of length eps."""
    return pgd_linf(model, x, y, eps=eps, steps=1, step_size=eps, clip=clip, target=target)


def fgm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, clip: bool = True,
        target: torch.Tensor | None = None) -> torch.Tensor:
    """Fast gradient method: one normalized-gradient step of l2 length eps."""
    return pgd_l2(model, x, y, eps=eps, steps=1, step_size=eps, clip=clip, target=target)


def logit_jacobian(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits B x K, their input gradients K x B x ...): one forward, K backward passes batched."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    classes = logits.shape[1]
    one_hot = torch.eye(classes, device=x.device, dtype=logits.dtype).unsqueeze(1).expand(-1, len(x), -1)
    (grads,) = torch.autograd.grad(logits, x, grad_outputs=one_hot, is_grads_batched=True)
    return logits.detach(), grads


def deepfool(model: nn.Module, x: torch.Tensor, overshoot: float = 0.02, max_iter: int = 50) -> torch.Tensor:
    """DeepFool (Moosavi-Dezfooli et al. 2016, Algorithm 2): the small l2 perturbation r that
    moves each input across the nearest linearized decision boundary of the class the model
    predicts, iterated until the prediction changes; returns r (1 + overshoot) scaled, unclipped."""
    original = model(x).argmax(1)
    rows = torch.arange(len(x), device=x.device)
    total = torch.zeros_like(x)
    for _ in range(max_iter):
        logits, grads = logit_jacobian(model, x + (1 + overshoot) * total)
        active = logits.argmax(1) == original
        if not active.any():
            break
        w = (grads - grads[original, rows]).transpose(0, 1).flatten(2)  # B x K x d
        f = (logits - logits[rows, original, None]).abs()  # B x K
        w_norm = w.norm(dim=2).clamp_min(1e-12)
        distance = f / w_norm
        distance[rows, original] = float("inf")
        nearest = distance.argmin(1)
        step = ((f[rows, nearest] + 1e-4) / w_norm[rows, nearest] ** 2)[:, None] * w[rows, nearest]
        total = total + torch.where(active[:, None], step, 0.0).view_as(x)
    return (1 + overshoot) * total


def uniform_noise(x: torch.Tensor, eps: float, generator: torch.Generator) -> torch.Tensor:
    """Noise uniform in the linf box of radius eps."""
    return eps * (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1)


ATTACKS: Registry = Registry("attack")
ATTACKS.register("pgd_l2")(pgd_l2)
ATTACKS.register("pgd_linf")(pgd_linf)
ATTACKS.register("fgsm")(fgsm)
ATTACKS.register("fgm")(fgm)
