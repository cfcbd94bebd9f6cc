"""The settings of a training run, apart from the loop that reads them: the train, schedule and
run sections of a spec (what every trial of a study shares), one method with fixed
hyperparameters, and the rules that tie them to a device."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from trainables.core.data import DATASET_INFO, DataConfig
from trainables.core.evaluation import EvalConfig
from trainables.core.methods import METHODS, check_hparams, double_backprop
from trainables.core.models import ModelConfig, check_model
from trainables.core.models.lipschitz import LIPSCHITZ_MODELS
from trainables.core.registry import ConfigError
from trainables.core.schema import INTERNAL, NamedEntry, require, require_seed


def require_fp16_gpu(precision: str, has_gpu: bool, why: str, key: str = "train.precision") -> None:
    """fp16 autocast needs a GPU (on the CPU, autocast runs bf16): refused where there is none, `why`."""
    require(precision != "fp16" or has_gpu, key, f"fp16 needs a GPU{why}; allowed: fp32, bf16")


@dataclass
class ScheduleConfig:
    """Learning-rate multiplier as a function of the (fractional) epoch.

    `step`: gamma ** floor(epoch / step_epochs). `piecewise_linear`: linear between
    (milestones[i], values[i]), e.g. milestones [0, 5, 30], values [0.1, 1, 0] (a warm-up then decay).
    `epoch_offset` is added to the (0-based) epoch first: 1 reproduces kernel_reg, whose StepLR
    is stepped before each epoch, so its first epoch is epoch 1 and each decay comes one epoch
    earlier than with 0.
    """

    kind: Literal["constant", "step", "piecewise_linear"] = "constant"
    step_epochs: int = 30
    gamma: float = 0.5
    milestones: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    epoch_offset: int = 0

    def check(self, path: str) -> None:
        require(self.step_epochs >= 1, f"{path}.step_epochs", f"must be >= 1, got {self.step_epochs}")
        require(self.epoch_offset >= 0, f"{path}.epoch_offset", f"must be >= 0, got {self.epoch_offset}")
        if self.kind == "piecewise_linear":
            require(len(self.milestones) >= 2 and len(self.milestones) == len(self.values),
                    f"{path}.milestones", "piecewise_linear needs >= 2 milestones and as many values")
            require(all(a < b for a, b in zip(self.milestones, self.milestones[1:], strict=False)),
                    f"{path}.milestones", f"must increase, got {self.milestones}")

    def multiplier(self, epoch: float) -> float:
        epoch += self.epoch_offset
        if self.kind == "step":
            return self.gamma ** math.floor(epoch / self.step_epochs)
        if self.kind == "piecewise_linear":
            return float(np.interp(epoch, self.milestones, self.values))
        return 1.0


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    compile: bool = False

    def check(self, path: str) -> None:
        require(self.epochs >= 1, f"{path}.epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch_size >= 1, f"{path}.batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"{path}.lr", f"must be > 0, got {self.lr}")
        require(self.batch_size <= 2 ** 24, f"{path}.batch_size", f"must be <= 2^24, got {self.batch_size}")
        require(self.epochs <= 10 ** 6, f"{path}.epochs", f"must be <= 10^6, got {self.epochs}")
        require_seed(self.seed, f"{path}.seed")
        require_fp16_gpu(self.precision, self.device != "cpu", " (autocast on the CPU runs bf16)", f"{path}.precision")

    def check_method(self, method: str, key: str) -> None:
        """fp16 scales the loss, not the input gradients a double-backprop method differentiates,
        which underflow: refused; bf16 keeps fp32's exponent range (tested against fp32)."""
        require(not (self.precision == "fp16" and double_backprop(method)), "train.precision",
                f"fp16 with {method} ({key}), whose loss backpropagates through input gradients that "
                f"underflow in fp16; allowed: fp32, bf16")


TRAIN_WARNING = "train_warning"  # a report's key: the network does not learn (said once, at the epoch it is seen)
EVAL_WARNINGS = "eval_warnings"  # a report's key: the epoch's attack-failure warnings, one string, "; " between


@dataclass
class RunSettings:
    """Everything about a training run except the method: shared by all trials of a study.
    `final_eval` runs once after the last epoch (costly attacks such as worst-of-100 LRC noise);
    its metrics are reported with that epoch's as `final_{name}`. `rungs`: the epochs where a
    study's scheduler compares trials (set by the study; None for a run on its own), where
    `eval.every: rungs` evaluates."""

    data: DataConfig
    model: ModelConfig
    train: TrainConfig
    eval: EvalConfig = field(default_factory=EvalConfig)
    final_eval: EvalConfig | None = None
    rungs: list[int] | None = field(default=None, metadata={INTERNAL: True})

    def check(self, path: str) -> None:
        require(self.eval.primary_robust_metric is not None, "eval.items",
                "needs an item that measures robust accuracy (an attack, noise or certified item)")
        self.check_model(self.model.name, "model.name")
        self.eval.check_classifier(self.data.dataset, "eval")
        if self.final_eval is not None:
            self.final_eval.check_classifier(self.data.dataset, "final_eval")

    def check_model(self, name: str, key: str) -> None:
        """Refuse a model that the evaluation cannot measure (certified accuracy needs a bound)."""
        if self.eval.needs_bound or (self.final_eval is not None and self.final_eval.needs_bound):
            allowed = ", ".join(sorted(LIPSCHITZ_MODELS))
            require(name in LIPSCHITZ_MODELS, key,
                    f"certified accuracy needs a Lipschitz-bounded model (for certified and certificate_check items); "
                    f"allowed: {allowed}")

    def with_overrides(self, hparams: dict[str, Any]) -> tuple[RunSettings, dict[str, Any]]:
        """These settings with a trial's `model.*` and `train.*` entries applied, and the
        method's own hyperparameters (the rest). `model.name` swaps the model: then the
        study's model options do not carry over."""
        model = {k.removeprefix("model."): v for k, v in hparams.items() if k.startswith("model.")}
        train = {k.removeprefix("train."): v for k, v in hparams.items() if k.startswith("train.")}
        rest = {k: v for k, v in hparams.items() if not k.startswith(("model.", "train."))}
        if not model and not train:
            return self, rest
        if "name" in model:  # another model: its own options only
            model_config = ModelConfig(model.pop("name"), model)
        else:
            model_config = ModelConfig(self.model.name, {**self.model.options, **model})
        return replace(self, model=model_config, train=replace(self.train, **train)), rest

    def metric_names(self) -> list[str]:
        """The evaluation metrics a run reports: each epoch's, then the final ones."""
        final = []
        if self.final_eval is not None:
            robust = ["robust_acc"] if self.final_eval.primary_robust_metric is not None else []
            final = self.final_eval.metric_names() + robust
        return self.eval.metric_names() + ["robust_acc"] + [f"final_{name}" for name in final]


class MethodChoice(NamedEntry):
    """`{name: pgd_l2, epsilon: 0.5}`: one method with fixed hyperparameters (its options)."""

    REGISTRY = METHODS

    @classmethod
    def checked_options(cls, name: str, options: dict[str, Any], path: str) -> dict[str, Any]:
        return check_hparams(name, options, path)


@dataclass
class RunConfig(RunSettings):
    """One configuration for `python -m trainables.core.train`."""

    method: MethodChoice = field(default_factory=lambda: MethodChoice("clean"))

    def check(self, path: str) -> None:
        super().check(path)
        self.train.check_method(self.method.name, "method.name")
        check_model(self.model, DATASET_INFO[self.data.dataset])  # option values, before any data is read


def resolve_device(choice: str) -> torch.device:
    """The device `train.device` names (`auto`: the GPU where one is visible)."""
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no GPU is visible")
    return torch.device(choice)


def same_examples(first: EvalConfig, second: EvalConfig) -> bool:
    """Do two evaluations measure the same examples (so their metrics may be compared)?"""
    return (first.split, first.examples, first.sample_seed) == (second.split, second.examples, second.sample_seed)
