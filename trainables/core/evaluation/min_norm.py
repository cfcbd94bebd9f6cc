"""`{kind: min_norm}`: per example the smallest adversarial perturbation that the minimum-norm
attacks find, and from those radii the robust accuracy at every eps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from trainables.core.evaluation.base import (
    EVALUATIONS,
    EXAMPLES,
    Batch,
    check_eps,
    distances,
    metric_name,
    seeded,
    verified,
)
from trainables.core.evaluation.item import Item
from trainables.core.evaluation.library import MIN_NORM_ATTACKS, MIN_NORM_SUPPORTS
from trainables.core.schema import require


def smallest_adversarial(batch: Batch, attacks: list[str], norm: str, steps: int, seed: int,
                         index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per attack, the verified adversarial distance of each example of `index` (inf where the
    attack found none), and `radius`, the smallest of them. `seed` is the item's (the run's
    seed shifts it)."""
    x, y = batch.x[index], batch.y[index]
    found = {}
    for attack in attacks:
        with seeded(batch.attack_seed(seed), x.device), torch.enable_grad():
            x_adv = MIN_NORM_ATTACKS[attack](batch.model, x, y, norm=norm, steps=steps)
        ok = verified(batch.model, x, x_adv, y, norm)
        found[attack] = torch.where(ok, distances(x, x_adv, norm), math.inf)
    found["radius"] = torch.stack(list(found.values())).amin(0)
    return found


@EVALUATIONS.register("min_norm")
@dataclass
class MinNormEval(Item):
    """The best of several minimum-norm attacks (FMN, DDN, FAB; `steps` each) per example (or
    the radius of an earlier evaluation's verified example, where smaller): its verified
    adversarial distance (0 for a misclassified example, inf where no attack found
    one: an attack failure unless the model is constant there). Reports
    `min_norm_{norm}_eps{eps}_acc` (correct and radius > eps), `min_norm_{norm}_median` (over
    correctly classified examples) and `min_norm_{norm}_unbroken` (correct examples no attack
    broke); the per-example radii are the table `min_norm_{norm}` (a CSV artifact)."""

    kind: Literal["min_norm"] = "min_norm"
    norm: Literal["l2", "linf"] = "l2"
    attacks: list[str] = field(default_factory=lambda: ["fmn", "ddn", "fab"])
    eps: list[float] = field(default_factory=lambda: [0.5])
    steps: int = 100
    seed: int = 0
    needs_classes = True
    uses_gradients = True

    def check(self, path: str) -> None:
        check_eps(self.eps, path)
        require(bool(self.attacks), f"{path}.attacks", f"needs one or more of {', '.join(MIN_NORM_ATTACKS)}")
        for i, attack in enumerate(self.attacks):
            require(attack in MIN_NORM_ATTACKS, f"{path}.attacks[{i}]",
                    f"unknown minimum-norm attack {attack!r}; allowed: {', '.join(MIN_NORM_ATTACKS)}")
            require(self.norm in MIN_NORM_SUPPORTS[attack], f"{path}.attacks[{i}]",
                    f"{attack} does not minimize the {self.norm} norm; allowed for {self.norm}: "
                    f"{', '.join(a for a, norms in MIN_NORM_SUPPORTS.items() if self.norm in norms)}")
        require(len(set(self.attacks)) == len(self.attacks), f"{path}.attacks", f"repeats an attack: {self.attacks}")
        require(self.steps >= 1, f"{path}.steps", f"must be >= 1, got {self.steps}")

    @property
    def prefix(self) -> str:
        return f"min_norm_{self.norm}"

    def metric_names(self) -> list[str]:
        return [metric_name(self.prefix, eps) for eps in self.eps] + [f"{self.prefix}_median",
                                                                       f"{self.prefix}_unbroken"]

    def counts(self) -> set[str]:
        return {f"{self.prefix}_unbroken"}

    def balls(self) -> dict[str, tuple[str, float]]:
        return {metric_name(self.prefix, eps): (self.norm, eps) for eps in self.eps}

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        ok = batch.clean_ok
        radius = torch.zeros(len(ok), dtype=torch.float64, device=ok.device)
        columns = {f"radius_{attack}": radius.clone() for attack in self.attacks}
        index = ok.nonzero()[:, 0]
        if len(index):
            found = smallest_adversarial(batch, self.attacks, self.norm, self.steps, self.seed, index)
            radius[index] = found.pop("radius")
            for attack, values in found.items():
                columns[f"radius_{attack}"][index] = values
        if self.norm in batch.known:  # an earlier evaluation's verified example may be closer
            radius = torch.where(ok, torch.minimum(radius, batch.known[self.norm].double()), radius)
        batch.record(self.prefix, label=batch.y, correct=ok, radius=radius, **columns)
        batch.record(EXAMPLES, **{f"{self.prefix}_radius": radius})
        counts = {metric_name(self.prefix, eps): ok & (radius > eps) for eps in self.eps}
        counts[f"{self.prefix}_unbroken"] = (ok & torch.isinf(radius)).sum()
        return counts

    def derived(self, metrics: dict[str, float], tables: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        table = tables[self.prefix]
        radii = table["radius"][table["correct"]]
        return {f"{self.prefix}_median": float(radii.median()) if len(radii) else math.nan}
