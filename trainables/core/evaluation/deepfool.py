"""`{kind: deepfool}`: DeepFool's robustness measure rho (the SGR paper's table)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from trainables.core.attacks import deepfool
from trainables.core.evaluation.base import EVALUATIONS, Batch
from trainables.core.evaluation.item import Item
from trainables.core.schema import require


@EVALUATIONS.register("deepfool")
@dataclass
class DeepFoolEval(Item):
    """rho = mean_i ||r_i|| / ||x_i|| (larger: more robust), r_i the minimal l2 perturbation that
    changes the predicted class (overshoot, max_iter as the paper)."""

    kind: Literal["deepfool"] = "deepfool"
    overshoot: float = 0.02
    max_iter: int = 50
    uses_gradients = True

    def check(self, path: str) -> None:
        require(self.overshoot >= 0, f"{path}.overshoot", f"must be >= 0, got {self.overshoot}")
        require(self.max_iter >= 1, f"{path}.max_iter", f"must be >= 1, got {self.max_iter}")

    def metric_names(self) -> list[str]:
        return ["deepfool_rho"]

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        with torch.enable_grad():
            r = deepfool(batch.model, batch.x, self.overshoot, self.max_iter)
        x = batch.x
        return {"deepfool_rho": (r.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)).sum()}
