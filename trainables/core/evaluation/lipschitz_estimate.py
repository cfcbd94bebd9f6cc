"""`{kind: lipschitz_estimate}`: an empirical lower estimate of the model's l2 Lipschitz constant."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from trainables.core.attacks import uniform_noise
from trainables.core.evaluation.base import EVALUATIONS, Batch
from trainables.core.evaluation.item import Item
from trainables.core.schema import require


@EVALUATIONS.register("lipschitz_estimate")
@dataclass
class LipschitzEstimateEval(Item):
    """As the LBDN reference: Adam ascent on ||f(x + dx) - f(x)||^2 / ||dx||^2 over x (from the
    evaluation examples) and dx (uniform in [-eps, eps] at each of `restarts` starts), `steps`
    steps, the learning rate cut tenfold whenever 5 steps gain under 1e-3. Reports the largest
    ratio's square root and, for a Lipschitz-bounded model, `lipschitz_ratio` = estimate /
    bound (at most 1 if sound)."""

    kind: Literal["lipschitz_estimate"] = "lipschitz_estimate"
    restarts: int = 10
    steps: int = 50
    eps: float = 0.05
    lr: float = 0.1

    def check(self, path: str) -> None:
        require(self.restarts >= 1 and self.steps >= 1, f"{path}.restarts", "restarts and steps must be >= 1")

    def metric_names(self) -> list[str]:
        return ["lipschitz_estimate", "lipschitz_ratio"]

    def maxima(self) -> set[str]:
        return {"lipschitz_estimate", "lipschitz_bound"}

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        model, x = batch.model, batch.x
        best = torch.zeros((), device=x.device)
        with torch.enable_grad():
            for _ in range(self.restarts):
                start = x.clone().requires_grad_(True)
                dx = uniform_noise(x, self.eps, batch.generator).requires_grad_(True)
                optimizer = torch.optim.Adam([start, dx], lr=self.lr)
                previous, since_cut = 0.0, 0
                for _ in range(self.steps):
                    ratio = ((model(start + dx) - model(start)).flatten(1).square().sum(1)
                             / (dx.flatten(1).square().sum(1) + 1e-12))
                    optimizer.zero_grad()
                    (-ratio.sum()).backward()
                    optimizer.step()
                    best = torch.maximum(best, ratio.detach().max())
                    since_cut += 1
                    if since_cut >= 5:
                        if float(best) < previous + 1e-3:
                            optimizer.param_groups[0]["lr"] /= 10
                            since_cut = 0
                        previous = float(best)
        bound = model.lipschitz_bound() if hasattr(model, "lipschitz_bound") else float("nan")
        return {"lipschitz_estimate": best.sqrt(), "lipschitz_bound": torch.tensor(bound, device=x.device)}

    def derived(self, metrics: dict[str, float], tables: dict) -> dict[str, float]:
        return {"lipschitz_ratio": metrics["lipschitz_estimate"] / metrics.pop("lipschitz_bound")}
