"""Indicators of attack failure (Carlini et al. 2019; Pintor et al. 2022; AutoAttack's checks):
signs that an evaluation's robust accuracy is an overestimate, as one-line warnings."""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

GRADIENT_SHARE = 0.01  # zero or non-finite input gradients on more than this share of points
PGD_MARGIN = 0.02  # PGD more than 2 points above AutoAttack at the same eps
ACCURACY = re.compile(r"^(?P<attack>.+)_eps(?P<eps>[0-9.e+-]+)_acc$")


def dead_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example: is the input gradient of the cross-entropy zero or non-finite? (shattered or
    vanishing gradients leave gradient attacks blind)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)
    flat = grad.flatten(1)
    return ~torch.isfinite(flat).all(1) | (flat.abs().amax(1) == 0)


def curves(metrics: dict[str, float]) -> dict[str, list[tuple[float, float]]]:
    """Accuracy vs eps per attack, from metric names `{attack}_eps{eps}_acc`."""
    found: dict[str, list[tuple[float, float]]] = {}
    for name, value in metrics.items():
        match = ACCURACY.match(name)
        if match:
            found.setdefault(match["attack"], []).append((float(match["eps"]), value))
    return {attack: sorted(points) for attack, points in found.items()}


def metric_warnings(metrics: dict[str, float]) -> list[str]:
    """Warnings read from one evaluation's metrics: PGD above AutoAttack at the same eps, accuracy
    rising with eps, Square breaking what the white-box attacks left, minimum-norm attacks
    that found no adversarial example for some points."""
    warnings = []
    by_attack = curves(metrics)
    for attack, points in by_attack.items():
        if any(later > earlier + 1e-12 for (_, earlier), (_, later) in zip(points, points[1:], strict=False)):
            warnings.append(f"{attack}: accuracy is not monotone in eps ({points})")
    for norm in ("l2", "linf"):
        strong = dict(by_attack.get(f"autoattack_{norm}", []))
        for eps, accuracy in by_attack.get(f"pgd_{norm}", []):
            if eps in strong and accuracy > strong[eps] + PGD_MARGIN:
                warnings.append(f"pgd_{norm} at eps {eps:.4g}: {accuracy:.3f}, over {PGD_MARGIN:.0%} above "
                                f"AutoAttack's {strong[eps]:.3f}: the cheap attack overstates robustness")
    for name, value in metrics.items():
        if name.endswith("_square_broken") and value > 0:
            warnings.append(f"{name.removesuffix('_square_broken')}: Square (black box) broke {value:.0f} "
                            "point(s) that the white-box attacks did not: a sign of gradient masking")
        if name.startswith("min_norm_") and name.endswith("_unbroken") and value > 0:
            warnings.append(f"{name.removesuffix('_unbroken')}: no adversarial example found for {value:.0f} "
                            "correctly classified point(s) at any distance: an attack failure, not robustness")
    return warnings
