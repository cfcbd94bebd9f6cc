"""`{kind: certified}`: certified accuracy of a Lipschitz-bounded model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from trainables.core.evaluation.base import (
    EVALUATIONS,
    EXAMPLES,
    Batch,
    check_eps,
    correct_predictions,
    metric_name,
)
from trainables.core.evaluation.item import Item

LBDN_EPS = [36 / 255, 72 / 255, 108 / 255]


def certified_radii(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    certificate: str = "closed_form") -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, certified l2 radius) per example, by the model's `certify` (`certificate`:
    closed_form, or precise: the MLP head's iterative certificate); a one-output regression is
    certified while |f - y| < 0.5 holds, within (0.5 - |f - y|) / L."""
    logits, radius = model.certify(x, precise=certificate == "precise")
    if logits.shape[1] == 1:
        radius = (0.5 - (logits[:, 0] - y).abs()) / model.lipschitz_bound()
    return correct_predictions(logits, y), radius


@EVALUATIONS.register("certified")
@dataclass
class CertifiedEval(Item):
    """Certified accuracy of a Lipschitz-bounded model (L its l2 bound): correct and certified at
    eps, by the model's `certify`. Plain head: (z_top1 - z_top2) > sqrt2 * L * eps. LLN head:
    min_j (z_y - z_j) / ||w_y - w_j|| > L * eps, with the normalized last rows w and L the bound
    of the features. MLP head: its curvature certificate over L, in closed form (`closed_form`,
    also the training-time one) or by Singla & Feizi's iterative dual solve (`precise`, the
    reference's evaluation; metrics `certified_precise_eps{eps}_acc`; other heads: the same as
    closed_form, which is already exact for their bound)."""

    kind: Literal["certified"] = "certified"
    eps: list[float] = field(default_factory=lambda: [*LBDN_EPS, 1.0])
    certificate: Literal["closed_form", "precise"] = "closed_form"
    needs_bound = True

    def check(self, path: str) -> None:
        check_eps(self.eps, path)

    @property
    def prefix(self) -> str:
        return "certified" if self.certificate == "closed_form" else "certified_precise"

    def metric_names(self) -> list[str]:
        return [metric_name(self.prefix, eps) for eps in self.eps]

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        ok, radius = certified_radii(batch.model, batch.x, batch.y, self.certificate)
        batch.record(EXAMPLES, **{f"{self.prefix}_radius": torch.where(ok, radius, 0.0)})
        return {metric_name(self.prefix, eps): ok & (radius > eps) for eps in self.eps}
