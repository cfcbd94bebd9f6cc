"""`{kind: attack}`: the project's own gradient attacks (PGD, FGSM, FGM), the cheap robust
metric that search and ASHA use every epoch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from trainables.core.attacks import ATTACKS, pgd
from trainables.core.evaluation.base import EVALUATIONS, Batch, check_eps, curve_area, metric_name, verified
from trainables.core.evaluation.item import Item
from trainables.core.schema import require

ONE_STEP_ATTACKS = ("fgsm", "fgm")
DEFAULT_STEPS = 20


@EVALUATIONS.register("attack")
@dataclass
class AttackEval(Item):
    """Robust accuracy under a gradient attack at each eps: pgd_l2, pgd_linf (`steps`, default
    20; `step_size`, default 2.5 * eps / steps; `restarts`, the first from delta = 0 (from a
    random point of the ball too with `random_start`, as kernel_reg's linf evaluation starts),
    the others from random points of the ball, drawn from the evaluation's seeded generator;
    `loss`: ce, or the margins dlr and cw; `best_iterate`: an example is broken if any iterate is
    misclassified), or the one-step fgsm and fgm.
    `targeted`: each example is pushed towards a random other class (drawn from the
    evaluation's seeded generator). Every adversarial example is re-verified before it counts."""

    kind: Literal["attack"] = "attack"
    attack: str = "pgd_l2"
    eps: list[float] = field(default_factory=lambda: [0.5])
    steps: int | None = None
    step_size: float | None = None
    targeted: bool = False
    restarts: int = 1
    random_start: bool = False
    loss: Literal["ce", "dlr", "cw"] = "ce"
    best_iterate: bool = True
    uses_gradients = True

    def check(self, path: str) -> None:
        ATTACKS.get(self.attack, f"{path}.attack")
        check_eps(self.eps, path)
        if self.attack in ONE_STEP_ATTACKS:
            require(self.steps is None and self.step_size is None and self.restarts == 1 and not self.random_start,
                    f"{path}.steps",
                    f"{self.attack} takes one step of length eps; steps, step_size, restarts and random_start are for "
                    "pgd_l2 / pgd_linf")
        require(self.steps is None or self.steps > 0, f"{path}.steps", f"must be > 0, got {self.steps}")
        require(self.restarts >= 1, f"{path}.restarts", f"must be >= 1, got {self.restarts}")

    @property
    def prefix(self) -> str:
        return f"targeted_{self.attack}" if self.targeted else self.attack

    @property
    def norm(self) -> str:
        return "linf" if self.attack in ("pgd_linf", "fgsm") else "l2"

    def balls(self) -> dict[str, tuple[str, float]]:
        return {metric_name(self.prefix, eps): (self.norm, eps) for eps in self.eps}

    def metric_names(self) -> list[str]:
        names = [metric_name(self.prefix, eps) for eps in self.eps]
        return names + [f"{self.prefix}_auc"] if len(self.eps) > 1 else names

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            target: torch.Tensor | None, generator: torch.Generator | None = None) -> torch.Tensor:
        """This item's attack on one batch at one eps (also what study.transfer crafts with);
        random starts come from `generator`."""
        if self.attack in ONE_STEP_ATTACKS:
            return ATTACKS.get(self.attack)(model, x, y, eps=eps, target=target)
        steps = self.steps or DEFAULT_STEPS
        step = self.step_size if self.step_size is not None else 2.5 * eps / steps
        return pgd(model, x, y, eps, steps, step, norm=self.norm, target=target, loss=self.loss,
                   restarts=self.restarts, random_init=self.random_start, generator=generator,
                   best_iterate=self.best_iterate)

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Per eps, which examples are correct clean and not broken by a verified example (this
        attack's or one known from an earlier evaluation)."""
        target = None
        if self.targeted:
            classes = batch.logits.shape[1]
            shift = torch.randint(1, classes, batch.y.shape, generator=batch.generator, device=batch.y.device)
            target = (batch.y + shift) % classes
        counts = {}
        for eps in self.eps:
            with torch.enable_grad():
                x_adv = self.run(batch.model, batch.x, batch.y, eps, target, batch.generator)
            broken = verified(batch.model, batch.x, x_adv, batch.y, self.norm, eps)
            counts[metric_name(self.prefix, eps)] = batch.clean_ok & ~broken & ~batch.known_broken(self.norm, eps)
        return counts

    def derived(self, metrics: dict[str, float], tables: dict) -> dict[str, float]:
        if len(self.eps) < 2:
            return {}
        accuracies = [metrics[metric_name(self.prefix, eps)] for eps in self.eps]
        return {f"{self.prefix}_auc": curve_area(metrics["clean_acc"], self.eps, accuracies)}
