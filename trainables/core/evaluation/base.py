"""What every evaluation item shares: the registry, the batch an item measures, metric names,
and the project's own re-verification of every adversarial example before it counts."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from trainables.core.registry import Registry
from trainables.core.schema import require

EVALUATIONS: Registry[type] = Registry("evaluation kind")
EXAMPLES = "examples"  # the per-example records: one row per evaluated example (index in the split, label, ...)
FINAL_EXAMPLES = f"final_{EXAMPLES}"  # a final (strong) evaluation's records: their columns become `final_*`
NORMS = {"l2": 2.0, "linf": math.inf}
# x_adv - x of float32 pixels in [0, 1] is exact only to one unit in the last place of 1.0
FLOAT_SLACK = 2.0 ** -23


@dataclass
class Batch:
    """One evaluation batch: the model (in eval mode), inputs, labels, the clean logits (computed
    once for every item), the evaluation's seeded generator, where items put per-example
    columns (`record`) and attack-failure warnings (`warn`), the run's seed (`seed`), which
    every random draw of the evaluation follows, and the radii within which an earlier
    evaluation already broke each example (`known`)."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    logits: torch.Tensor
    generator: torch.Generator
    columns: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seed: int = 0
    known: dict[str, torch.Tensor] = field(default_factory=dict)  # norm -> per example a verified broken radius

    def known_broken(self, norm: str, eps: float) -> torch.Tensor:
        """Which examples an earlier evaluation of the same weights already broke within `eps` in
        `norm` by a verified adversarial example (none where it gave no radii)."""
        radius = self.known.get(norm)
        if radius is None:
            return torch.zeros(len(self.y), dtype=torch.bool, device=self.y.device)
        return radius <= eps

    def attack_seed(self, item_seed: int) -> int:
        """An item's own seed shifted by the run's: other runs' seeds draw other starts."""
        return (item_seed + self.seed) % 2 ** 32

    @property
    def clean_ok(self) -> torch.Tensor:
        return correct_predictions(self.logits, self.y)

    def record(self, table: str, **columns: torch.Tensor) -> None:
        """Append per-example values of this batch to `table` (a CSV artifact after the run)."""
        for name, values in columns.items():
            self.columns.setdefault(table, {}).setdefault(name, []).append(values.detach().cpu())

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)


def correct_predictions(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Which examples are predicted correctly: the top class, or for a one-output regression
    (square_wave) an output within 0.5 of its target."""
    if outputs.shape[1] == 1:
        return (outputs[:, 0] - y).abs() < 0.5
    return outputs.argmax(1) == y


def metric_name(prefix: str, eps: float) -> str:
    return f"{prefix}_eps{eps:.4g}_acc"


def curve_area(clean: float, eps: list[float], accuracies: list[float]) -> float:
    """The area under accuracy vs eps from (0, clean) to the largest eps, over that eps: the
    mean accuracy over the range of strengths (trapezoid rule)."""
    points = sorted(zip([0.0, *eps], [clean, *accuracies], strict=True))
    area = sum((e1 - e0) * (a0 + a1) / 2 for (e0, a0), (e1, a1) in zip(points, points[1:], strict=False))
    return area / points[-1][0]


def check_eps(eps: list[float], path: str) -> None:
    require(bool(eps) and all(math.isfinite(e) and e > 0 for e in eps), f"{path}.eps",
            f"needs one or more positive finite epsilons, got {eps}")


def distances(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per example the l2 or linf norm of x_adv - x, in float64."""
    return (x_adv.double() - x.double()).flatten(1).norm(p=NORMS[norm], dim=1)


@torch.no_grad()
def verified(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, norm: str,
             eps: float | torch.Tensor = math.inf) -> torch.Tensor:
    """Which of an attack's outputs count as adversarial examples: finite, inside [0, 1], within
    eps (1 + 1e-6, plus float32 rounding of a pixel) and misclassified by the model in eval mode.
    Attacks are never trusted on their own word."""
    assert not model.training, "adversarial examples are verified in eval mode"
    flat = x_adv.flatten(1)
    inside = torch.isfinite(flat).all(1) & (flat >= 0).all(1) & (flat <= 1).all(1)
    within = distances(x, x_adv, norm) <= torch.as_tensor(eps, dtype=torch.float64) * (1 + 1e-6) + FLOAT_SLACK
    return inside & within & ~correct_predictions(model(x_adv), y)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Torch's global RNG seeded for a library attack that draws from it, restored afterwards,
    so an evaluation is deterministic and leaves training's random stream untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
