"""`{kind: autoattack}`: the AutoAttack protocol (Croce & Hein 2020) as a cascade per eps."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from trainables.core.evaluation.base import EVALUATIONS, Batch, check_eps, metric_name, seeded, verified
from trainables.core.evaluation.item import Item
from trainables.core.evaluation.library import apgd_ce, apgd_t, fab_t
from trainables.core.schema import require, require_seed
from trainables.core.square import square

VERSIONS = {"standard": ("apgd_ce", "apgd_t", "fab_t", "square"), "fast": ("apgd_ce", "apgd_t")}
ATTACKS = {"apgd_ce": apgd_ce, "apgd_t": apgd_t, "fab_t": fab_t, "square": square}


@EVALUATIONS.register("autoattack")
@dataclass
class AutoAttackEval(Item):
    """Robust accuracy under AutoAttack: per eps (ascending) APGD-CE, APGD-T (targeted DLR, 9
    targets), FAB-T (9 targets) and Square (`square_queries`, 5,000) for `standard`, APGD-CE and
    APGD-T for `fast`; each attack sees only the points that every earlier attack (and every
    smaller eps) left correctly classified, and a point counts as broken only by a verified
    adversarial example (one found earlier by the search's attack on the same weights counts:
    the cascade does not attack it again). Reports `autoattack_{norm}_eps{eps}_acc` and, per eps, how many points
    each attack broke (`autoattack_{norm}_eps{eps}_{attack}_broken`). Seeded: deterministic."""

    kind: Literal["autoattack"] = "autoattack"
    norm: Literal["l2", "linf"] = "linf"
    eps: list[float] = field(default_factory=lambda: [8 / 255])
    version: Literal["standard", "fast"] = "standard"
    n_iter: int = 100
    square_queries: int = 5000
    seed: int = 0
    needs_classes = True
    uses_gradients = True

    def check(self, path: str) -> None:
        check_eps(self.eps, path)
        require(self.n_iter >= 1, f"{path}.n_iter", f"must be >= 1, got {self.n_iter}")
        require(self.square_queries >= 1, f"{path}.square_queries", f"must be >= 1, got {self.square_queries}")
        require_seed(self.seed, f"{path}.seed")

    @property
    def prefix(self) -> str:
        return f"autoattack_{self.norm}"

    def broken_name(self, eps: float, attack: str) -> str:
        return f"{self.prefix}_eps{eps:.4g}_{attack}_broken"

    def metric_names(self) -> list[str]:
        return [metric_name(self.prefix, eps) for eps in self.eps] + sorted(self.counts())

    def counts(self) -> set[str]:
        return {self.broken_name(eps, attack) for eps in self.eps for attack in VERSIONS[self.version]}

    def balls(self) -> dict[str, tuple[str, float]]:
        return {metric_name(self.prefix, eps): (self.norm, eps) for eps in self.eps}

    def run(self, attack: str, batch: Batch, index: torch.Tensor, eps: float) -> torch.Tensor:
        x, y = batch.x[index], batch.y[index]
        if attack == "square":
            return square(batch.model, x, y, eps=eps, norm=self.norm, n_queries=self.square_queries,
                          seed=batch.attack_seed(self.seed))
        with seeded(batch.attack_seed(self.seed), x.device), torch.enable_grad():
            return ATTACKS[attack](batch.model, x, y, eps=eps, norm=self.norm, n_iter=self.n_iter)

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        alive = batch.clean_ok.clone()
        counts = {}
        for eps in sorted(self.eps):  # an example broken within a smaller eps is broken within this one
            alive &= ~batch.known_broken(self.norm, eps)
            for attack in VERSIONS[self.version]:
                index = alive.nonzero()[:, 0]
                broken = torch.zeros(len(index), dtype=torch.bool, device=alive.device)
                if len(index):
                    x_adv = self.run(attack, batch, index, eps)
                    broken = verified(batch.model, batch.x[index], x_adv, batch.y[index], self.norm, eps)
                    alive[index[broken]] = False
                counts[self.broken_name(eps, attack)] = broken.sum()
            counts[metric_name(self.prefix, eps)] = alive.clone()
        return counts
