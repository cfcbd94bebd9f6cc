"""Per-epoch evaluation: clean accuracy and each configured item's metrics on a fixed subset.

Metric names: `clean_acc`; an attack item gives `{attack}_eps{eps}_acc` for each eps
(e.g. `pgd_l2_eps0.5_acc`); `robust_acc` repeats the study's primary robust metric.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from trainables.core.attacks import ATTACKS
from trainables.core.data import DataBundle, eval_batches
from trainables.core.registry import ConfigError, Registry
from trainables.core.schema import parse, require

EVALUATIONS: Registry[type] = Registry("evaluation kind")


def metric_name(prefix: str, eps: float) -> str:
    return f"{prefix}_eps{eps:.4g}_acc"


@EVALUATIONS.register("attack")
@dataclass
class AttackEval:
    """Robust accuracy under an attack at each eps: correct on the clean and the attacked input.
    `step_size` defaults to 2.5 * eps / steps. Attacks start from delta = 0 (deterministic)."""

    kind: Literal["attack"] = "attack"
    attack: str = "pgd_l2"
    eps: list[float] = field(default_factory=lambda: [0.5])
    steps: int = 20
    step_size: float | None = None

    def check(self, path: str) -> None:
        ATTACKS.get(self.attack, f"{path}.attack")
        require(bool(self.eps) and all(e > 0 for e in self.eps), f"{path}.eps",
                f"needs one or more positive epsilons, got {self.eps}")
        require(self.steps > 0, f"{path}.steps", f"must be > 0, got {self.steps}")

    def metric_names(self) -> list[str]:
        return [metric_name(self.attack, eps) for eps in self.eps]

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-metric counts of examples still correctly classified under attack."""
        attack = ATTACKS.get(self.attack)
        clean_ok = model(x).argmax(1) == y
        counts = {}
        for eps, name in zip(self.eps, self.metric_names(), strict=True):
            step = self.step_size if self.step_size is not None else 2.5 * eps / self.steps
            with torch.enable_grad():
                x_adv = attack(model, x, y, eps=eps, steps=self.steps, step_size=step)
            counts[name] = (clean_ok & (model(x_adv).argmax(1) == y)).sum()
        return counts


class EvalItem:
    """An `eval.items` entry, dispatched on its `kind` to the registered evaluation."""

    @classmethod
    def from_mapping(cls, data: Any, path: str) -> Any:
        if not isinstance(data, dict) or "kind" not in data:
            raise ConfigError(f"{path}: expected a mapping with a `kind`; kinds: {EVALUATIONS.names()}")
        return parse(EVALUATIONS.get(data["kind"], f"{path}.kind"), data, path)


@dataclass
class EvalConfig:
    """What is measured after every `every` epochs, on the first `examples` of `split`."""

    every: int = 1
    split: Literal["val", "test"] = "test"
    examples: int | None = 1000
    batch_size: int = 500
    items: list[EvalItem] = field(default_factory=lambda: [AttackEval()])
    robust_metric: str | None = None

    def check(self, path: str) -> None:
        require(self.every >= 1, f"{path}.every", f"must be >= 1, got {self.every}")
        require(self.examples is None or self.examples > 0, f"{path}.examples",
                f"must be a positive count or null (all), got {self.examples}")
        names = self.metric_names()
        if self.robust_metric is not None:
            require(self.robust_metric in names, f"{path}.robust_metric",
                    f"{self.robust_metric!r} is not measured; measured: {', '.join(names)}")
        else:
            require(len(names) > 1, f"{path}.items", "needs an item that measures robust accuracy")

    def metric_names(self) -> list[str]:
        names = ["clean_acc"]
        for item in self.items:
            names += item.metric_names()
        return names

    @property
    def primary_robust_metric(self) -> str:
        """The metric reported as `robust_acc`: `robust_metric`, else the first robust metric."""
        return self.robust_metric or self.metric_names()[1]


@torch.no_grad()
def evaluate(model: nn.Module, data: DataBundle, config: EvalConfig) -> dict[str, float]:
    """Accuracy metrics of `model` on the fixed evaluation subset, `robust_acc` included."""
    x_all, y_all = data.split(config.split)
    if config.examples is not None:
        x_all, y_all = x_all[: config.examples], y_all[: config.examples]
    if len(y_all) == 0:
        raise ConfigError(f"eval.split: the {config.split} split is empty (set data.val > 0 or use test)")
    was_training = model.training
    model.eval()
    totals: dict[str, torch.Tensor] = {}
    for x, y in eval_batches(x_all, y_all, config.batch_size):
        counts = {"clean_acc": (model(x).argmax(1) == y).sum()}
        for item in config.items:
            counts.update(item.correct(model, x, y))
        for name, count in counts.items():
            totals[name] = totals.get(name, 0) + count
    model.train(was_training)
    metrics = {name: float(total) / len(y_all) for name, total in totals.items()}
    metrics["robust_acc"] = metrics[config.primary_robust_metric]
    return metrics
