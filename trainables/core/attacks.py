"""Attacks on a model with inputs in [0, 1], shared by training methods and search-time
evaluation: l2 and linf PGD (untargeted or targeted; cross-entropy or margin losses; restarts;
best-iterate counting), their one-step forms FGM and FGSM, DeepFool's minimal l2 perturbation,
and random noise. Final robust accuracy comes from adv-lib's attacks (`evaluation/`)."""

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


LOSSES = ("ce", "dlr", "cw")


def attack_loss(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Per example, what an attack ascends: `ce` the cross-entropy of the label (untargeted) or
    minus that of the target; `cw` the margin max_{j != y} z_j - z_y (or z_t - max_{j != t} z_j);
    `dlr` Croce & Hein's scale-invariant margin, -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3)
    untargeted, -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) targeted (pi: logits sorted)."""
    if loss == "ce":
        if target is None:
            return F.cross_entropy(logits, y, reduction="none")
        return -F.cross_entropy(logits, target, reduction="none")
    z_y = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        others = logits.scatter(1, y[:, None], -torch.inf).amax(1)
        margin = others - z_y
    else:
        z_t = logits.gather(1, target[:, None])[:, 0]
        margin = z_t - logits.scatter(1, target[:, None], -torch.inf).amax(1) if loss == "cw" else z_t - z_y
    if loss == "cw":
        return margin
    ranked = logits.sort(1, descending=True).values
    scale = ranked[:, 0] - (ranked[:, 2] if target is None else (ranked[:, 2] + ranked[:, 3]) / 2)
    return margin / (scale + 1e-12)


def attack_step(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None,
                loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits at x_adv, the gradient of the summed attack loss there): one forward, one backward."""
    x_adv = x_adv.detach().requires_grad_(True)
    logits = model(x_adv)
    (grad,) = torch.autograd.grad(attack_loss(logits, y, target, loss).sum(), x_adv)
    return logits.detach(), grad


def random_start(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator) -> torch.Tensor:
    """A starting perturbation drawn in the eps-ball: uniform in the linf box, or a uniformly
    random direction with a radius uniform in [0, eps] for l2."""
    if norm == "linf":
        return eps * (2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1)
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    radius = eps * torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return direction / per_example_norm(direction).clamp_min(1e-12) * radius


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "l2",
    clip: bool = True,
    target: torch.Tensor | None = None,
    loss: str = "ce",
    restarts: int = 1,
    random_init: bool = False,
    generator: torch.Generator | None = None,
    best_iterate: bool = False,
) -> torch.Tensor:
    """PGD in the l2 or linf ball: normalized-gradient (l2) or sign (linf) ascent on the attack
    `loss` (targeted at `target` when given), each step projected on the eps-ball (and x + delta
    onto [0, 1] when `clip`). The first start is delta = 0 unless `random_init`; each further
    restart starts at a random point of the ball (`generator`). With `best_iterate` an example
    keeps the first iterate, of any restart, that the model misclassifies (Pintor et al.'s
    "silent success": the final iterate may have left the adversarial region); without it, the
    first restart whose final iterate is misclassified; for examples never misclassified, the
    final iterate of the last restart. Returns x + delta."""
    result = x.detach().clone()
    found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for start in range(restarts):
        if random_init or start > 0:
            delta = random_start(x, eps, norm, generator or torch.Generator(x.device).manual_seed(start))
        else:
            delta = torch.zeros_like(x)
        for step in range(steps + 1):
            x_adv = (x + delta).clamp(0.0, 1.0) if clip else x + delta
            check = best_iterate or (restarts > 1 and step == steps)  # restarts count the final iterates
            if step == steps:
                logits = model(x_adv).detach() if check else None
            else:
                logits, grad = attack_step(model, x_adv, y, target, loss)
            if check:
                fresh = (logits.argmax(1) != y) & ~found
                result[fresh] = x_adv[fresh].detach()
                found |= fresh
            if step == steps:
                break
            if norm == "linf":
                delta = (delta + step_size * grad.sign()).clamp(-eps, eps)
            else:
                delta = project_l2(delta + step_size * grad / per_example_norm(grad).clamp_min(1e-12), eps)
            if clip:
                delta = (x + delta).clamp(0.0, 1.0) - x
        last = ~found
        result[last] = ((x + delta).clamp(0.0, 1.0) if clip else x + delta)[last].detach()
    return result


def pgd_l2(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
           clip: bool = True, target: torch.Tensor | None = None, **options: object) -> torch.Tensor:
    """l2 PGD, from delta = 0 unless options say otherwise (kernel_reg's training attack)."""
    return pgd(model, x, y, eps, steps, step_size, norm="l2", clip=clip, target=target, **options)


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int, step_size: float,
             clip: bool = True, generator: torch.Generator | None = None, target: torch.Tensor | None = None,
             **options: object) -> torch.Tensor:
    """linf PGD: with a `generator` it starts uniformly in the box (kernel_reg's training attack),
    without one from delta = 0 (deterministic evaluation)."""
    return pgd(model, x, y, eps, steps, step_size, norm="linf", clip=clip, target=target,
               random_init=generator is not None, generator=generator, **options)


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
