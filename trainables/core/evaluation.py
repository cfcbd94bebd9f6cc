"""Per-epoch evaluation: clean accuracy and each configured item's metrics on a fixed subset.

Metric names: `clean_acc`; an attack item gives `{attack}_eps{eps}_acc` for each eps
(e.g. `pgd_l2_eps0.5_acc`, `targeted_pgd_linf_eps0.03_acc`) and, with two or more eps, the
area under its accuracy-vs-eps curve `{attack}_auc`; a noise item gives `uniform_eps{eps}_acc`
or `lrc_zeta{zeta}_eps{eps}_acc`; DeepFool gives `deepfool_rho`. `robust_acc` repeats the
study's primary robust metric. An example counts as robust only when it is classified
correctly both clean and under the attack (under every one of the k noise draws).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from trainables.core.attacks import ATTACKS, deepfool, uniform_noise
from trainables.core.covariance import LrcNoise
from trainables.core.data import DataBundle, eval_batches
from trainables.core.registry import ConfigError, Registry
from trainables.core.schema import parse, require

EVALUATIONS: Registry[type] = Registry("evaluation kind")
ONE_STEP_ATTACKS = ("fgsm", "fgm")
DEFAULT_STEPS = 20


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
    require(bool(eps) and all(e > 0 for e in eps), f"{path}.eps",
            f"needs one or more positive epsilons, got {eps}")


@EVALUATIONS.register("attack")
@dataclass
class AttackEval:
    """Robust accuracy under a gradient attack at each eps: pgd_l2, pgd_linf (`steps`, default
    20; `step_size`, default 2.5 * eps / steps), or the one-step fgsm and fgm. `targeted`: each
    example is pushed towards a random other class (drawn from the evaluation's seeded
    generator). Attacks start from delta = 0 (deterministic)."""

    kind: Literal["attack"] = "attack"
    attack: str = "pgd_l2"
    eps: list[float] = field(default_factory=lambda: [0.5])
    steps: int | None = None
    step_size: float | None = None
    targeted: bool = False

    def check(self, path: str) -> None:
        ATTACKS.get(self.attack, f"{path}.attack")
        check_eps(self.eps, path)
        if self.attack in ONE_STEP_ATTACKS:
            require(self.steps is None and self.step_size is None, f"{path}.steps",
                    f"{self.attack} takes one step of length eps; steps and step_size are for pgd_l2 / pgd_linf")
        require(self.steps is None or self.steps > 0, f"{path}.steps", f"must be > 0, got {self.steps}")

    @property
    def prefix(self) -> str:
        return f"targeted_{self.attack}" if self.targeted else self.attack

    def metric_names(self) -> list[str]:
        names = [metric_name(self.prefix, eps) for eps in self.eps]
        return names + [f"{self.prefix}_auc"] if len(self.eps) > 1 else names

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
            target: torch.Tensor | None) -> torch.Tensor:
        attack = ATTACKS.get(self.attack)
        if self.attack in ONE_STEP_ATTACKS:
            return attack(model, x, y, eps=eps, target=target)
        steps = self.steps or DEFAULT_STEPS
        step = self.step_size if self.step_size is not None else 2.5 * eps / steps
        return attack(model, x, y, eps=eps, steps=steps, step_size=step, target=target)

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-metric counts of examples still correctly classified under attack (`logits`: the
        model's on the clean batch, which evaluate computes once for every item)."""
        clean_ok = logits.argmax(1) == y
        target = None
        if self.targeted:
            classes = logits.shape[1]
            shift = torch.randint(1, classes, y.shape, generator=generator, device=y.device)
            target = (y + shift) % classes
        counts = {}
        for eps in self.eps:
            with torch.enable_grad():
                x_adv = self.run(model, x, y, eps, target)
            counts[metric_name(self.prefix, eps)] = (clean_ok & (model(x_adv).argmax(1) == y)).sum()
        return counts

    def derived(self, metrics: dict[str, float]) -> dict[str, float]:
        if len(self.eps) < 2:
            return {}
        accuracies = [metrics[metric_name(self.prefix, eps)] for eps in self.eps]
        return {f"{self.prefix}_auc": curve_area(metrics["clean_acc"], self.eps, accuracies)}


@functools.lru_cache(maxsize=8)
def lrc_sampler(shape: tuple[int, ...], zeta: float, device: torch.device) -> LrcNoise:
    return LrcNoise(shape, zeta, device)


@EVALUATIONS.register("noise")
@dataclass
class NoiseEval:
    """Accuracy under random noise, worst of `k` draws per example: `uniform` (linf box of
    radius eps) or `lrc` (long-range correlated Gaussian noise with decay length zeta, each draw
    scaled to l2 norm eps; the SGR paper's attack uses k = 100)."""

    kind: Literal["noise"] = "noise"
    noise: Literal["uniform", "lrc"] = "lrc"
    eps: list[float] = field(default_factory=lambda: [1.0])
    zeta: list[float] = field(default_factory=lambda: [4.0])
    k: int = 100

    def check(self, path: str) -> None:
        check_eps(self.eps, path)
        require(self.k >= 1, f"{path}.k", f"must be >= 1, got {self.k}")
        if self.noise == "lrc":
            require(bool(self.zeta) and all(z > 0 for z in self.zeta), f"{path}.zeta",
                    f"needs one or more positive decay lengths, got {self.zeta}")

    def settings(self) -> list[tuple[str, float | None]]:
        """(metric prefix, zeta) for each noise this item draws."""
        if self.noise == "uniform":
            return [("uniform", None)]
        return [(f"lrc_zeta{zeta:.4g}", zeta) for zeta in self.zeta]

    def metric_names(self) -> list[str]:
        return [metric_name(prefix, eps) for prefix, _ in self.settings() for eps in self.eps]

    def draw(self, x: torch.Tensor, eps: float, zeta: float | None, generator: torch.Generator) -> torch.Tensor:
        if zeta is None:
            return uniform_noise(x, eps, generator)
        return lrc_sampler(tuple(x.shape[1:]), zeta, x.device).sample_scaled(len(x), eps, generator).to(x.dtype)

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        clean_ok = logits.argmax(1) == y
        counts = {}
        for prefix, zeta in self.settings():
            for eps in self.eps:
                ok = clean_ok.clone()
                for _ in range(self.k):
                    noisy = (x + self.draw(x, eps, zeta, generator)).clamp(0.0, 1.0)
                    ok &= model(noisy).argmax(1) == y
                counts[metric_name(prefix, eps)] = ok.sum()
        return counts

    def derived(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}


@EVALUATIONS.register("certified")
@dataclass
class CertifiedEval:
    """Certified accuracy of a Lipschitz-bounded model (L its l2 bound): correct and certified at
    eps, by the model's `certify`. Plain head: (z_top1 - z_top2) > sqrt2 * L * eps. LLN head:
    min_j (z_y - z_j) / ||w_y - w_j|| > L * eps, with the normalized last rows w and L the bound
    of the features. MLP head: its curvature certificate over L."""

    kind: Literal["certified"] = "certified"
    eps: list[float] = field(default_factory=lambda: [36 / 255, 72 / 255, 108 / 255, 1.0])

    def check(self, path: str) -> None:
        check_eps(self.eps, path)

    def metric_names(self) -> list[str]:
        return [metric_name("certified", eps) for eps in self.eps]

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        logits, radius = model.certify(x)
        if logits.shape[1] == 1:  # regression: |f - y| < 0.5 holds within (0.5 - |f - y|) / L
            radius = (0.5 - (logits[:, 0] - y).abs()) / model.lipschitz_bound()
        ok = correct_predictions(logits, y)
        return {metric_name("certified", eps): (ok & (radius > eps)).sum() for eps in self.eps}

    def derived(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}


@EVALUATIONS.register("lipschitz_estimate")
@dataclass
class LipschitzEstimateEval:
    """An empirical lower estimate of the model's l2 Lipschitz constant, as the LBDN reference:
    Adam ascent on ||f(x + dx) - f(x)||^2 / ||dx||^2 over x (from the evaluation examples) and
    dx (uniform in [-eps, eps] at each of `restarts` starts), `steps` steps, the learning rate
    cut tenfold whenever 5 steps gain under 1e-3. Reports the largest ratio's square root and,
    for a Lipschitz-bounded model, `lipschitz_ratio` = estimate / bound (at most 1 if sound)."""

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

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        best = torch.zeros((), device=x.device)
        with torch.enable_grad():
            for _ in range(self.restarts):
                start = x.clone().requires_grad_(True)
                dx = uniform_noise(x, self.eps, generator).requires_grad_(True)
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

    def derived(self, metrics: dict[str, float]) -> dict[str, float]:
        return {"lipschitz_ratio": metrics["lipschitz_estimate"] / metrics.pop("lipschitz_bound")}


@EVALUATIONS.register("fit")
@dataclass
class FitEval:
    """The mean squared error of a one-output regression (the square_wave toy)."""

    kind: Literal["fit"] = "fit"

    def metric_names(self) -> list[str]:
        return ["fit_mse"]

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {"fit_mse": (logits[:, 0] - y).square().sum()}

    def derived(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}


@EVALUATIONS.register("deepfool")
@dataclass
class DeepFoolEval:
    """DeepFool's robustness measure rho = mean_i ||r_i|| / ||x_i|| (larger: more robust), r_i the
    minimal l2 perturbation that changes the predicted class (overshoot, max_iter as the paper)."""

    kind: Literal["deepfool"] = "deepfool"
    overshoot: float = 0.02
    max_iter: int = 50

    def check(self, path: str) -> None:
        require(self.overshoot >= 0, f"{path}.overshoot", f"must be >= 0, got {self.overshoot}")
        require(self.max_iter >= 1, f"{path}.max_iter", f"must be >= 1, got {self.max_iter}")

    def metric_names(self) -> list[str]:
        return ["deepfool_rho"]

    def correct(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                generator: torch.Generator) -> dict[str, torch.Tensor]:
        with torch.enable_grad():
            r = deepfool(model, x, self.overshoot, self.max_iter)
        return {"deepfool_rho": (r.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1).clamp_min(1e-12)).sum()}

    def derived(self, metrics: dict[str, float]) -> dict[str, float]:
        return {}


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

    def metric_names(self) -> list[str]:
        names = ["clean_acc"]
        for item in self.items:
            names += item.metric_names()
        return names

    def robust_accuracies(self) -> list[str]:
        return [n for n in self.metric_names()[1:] if n.endswith("_acc")]

    @property
    def primary_robust_metric(self) -> str | None:
        """The metric reported as `robust_acc`: `robust_metric`, else the first robust accuracy
        (None when nothing measures one, as a final evaluation may)."""
        return self.robust_metric or next(iter(self.robust_accuracies()), None)


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
    generator = torch.Generator(device=x_all.device).manual_seed(0)  # same noise and targets every time
    maxima = set().union(*(getattr(item, "maxima", set)() for item in config.items))
    totals: dict[str, torch.Tensor] = {}
    for x, y in eval_batches(x_all, y_all, config.batch_size):
        logits = model(x)
        counts = {"clean_acc": correct_predictions(logits, y).sum()}
        for item in config.items:
            counts.update(item.correct(model, x, y, logits, generator))
        for name, count in counts.items():
            combine = torch.maximum if name in maxima else torch.add
            totals[name] = combine(totals[name], count) if name in totals else count
    model.train(was_training)
    metrics = {name: float(total) / (1 if name in maxima else len(y_all)) for name, total in totals.items()}
    for item in config.items:
        metrics.update(item.derived(metrics))
    if config.primary_robust_metric is not None:
        metrics["robust_acc"] = metrics[config.primary_robust_metric]
    return metrics
