"""The training loop, top to bottom: build, (resume,) train an epoch, evaluate, report, repeat.

Pure torch: no Ray, no MLflow. `fit` is what the Ray trainable calls; `python -m
trainables.core.train RUN.yaml` runs one configuration from the command line.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from trainables.core.data import DATASET_INFO, DataBundle, DataConfig, load_data, train_batches
from trainables.core.evaluation import EvalConfig, metric_warnings, run_evaluation
from trainables.core.methods import METHODS, Method, StepContext, build_method, check_hparams, double_backprop
from trainables.core.models import ModelConfig, build_model, check_model
from trainables.core.models.lipschitz import LIPSCHITZ_MODELS
from trainables.core.presets import apply_preset
from trainables.core.registry import ConfigError
from trainables.core.schema import INTERNAL, apply_overrides, load_yaml, parse, require


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
        require(0 <= self.seed < 2 ** 32, f"{path}.seed", f"must be in 0 .. 2^32 - 1, got {self.seed}")
        require(not (self.precision == "fp16" and self.device == "cpu"), f"{path}.precision",
                "fp16 needs a GPU (autocast on the CPU runs bf16); allowed: fp32, bf16")

    def check_method(self, method: str, key: str) -> None:
        """fp16 scales the loss, not the input gradients a double-backprop method differentiates,
        which underflow: refused; bf16 keeps fp32's exponent range (tested against fp32)."""
        require(not (self.precision == "fp16" and double_backprop(method)), "train.precision",
                f"fp16 with {method} ({key}), whose loss backpropagates through input gradients that "
                f"underflow in fp16; allowed: fp32, bf16")


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


@dataclass
class MethodChoice:
    """`{name: pgd_l2, epsilon: 0.5}`: one method with fixed hyperparameters."""

    name: str
    hparams: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Any, path: str) -> MethodChoice:
        if not isinstance(data, dict) or "name" not in data:
            raise ConfigError(f"{path}: expected a mapping with a `name`; methods: {METHODS.names()}")
        hparams = {k: v for k, v in data.items() if k != "name"}
        return cls(data["name"], check_hparams(data["name"], hparams, path))

    def to_mapping(self) -> dict[str, Any]:
        return {"name": self.name, **self.hparams}


@dataclass
class RunConfig(RunSettings):
    """One configuration for `python -m trainables.core.train`."""

    method: MethodChoice = field(default_factory=lambda: MethodChoice("clean"))

    def check(self, path: str) -> None:
        super().check(path)
        self.train.check_method(self.method.name, "method.name")
        check_model(self.model, DATASET_INFO[self.data.dataset])  # option values, before any data is read


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or inf: the run cannot continue."""


def resolve_device(choice: str) -> torch.device:
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for but no GPU is visible")
    return torch.device(choice)


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def training_model(model: nn.Module, train: TrainConfig) -> nn.Module:
    """What the training steps call: the model, or `torch.compile` of it (`train.compile`; the
    state, evaluation and certificates stay with the model itself)."""
    return torch.compile(model) if train.compile else model


def same_examples(first: EvalConfig, second: EvalConfig) -> bool:
    """Do two evaluations measure the same examples (so their metrics may be compared)?"""
    return (first.split, first.examples) == (second.split, second.examples)


def make_optimizer(model: nn.Module, train: TrainConfig, method: Method) -> torch.optim.Optimizer:
    wd = method.optimizer_weight_decay()
    if train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=wd)
    return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=wd)


Tables = dict[str, dict[str, torch.Tensor]]
EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]], Tables], None]
EVAL_WARNINGS = "eval_warnings"  # the epoch's attack-failure warnings, one string, "; " between


def backward_step(model: nn.Module, method: Method, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                  autocast: torch.dtype | None, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
    """The method's loss (under autocast in bf16 or fp16) and its gradients (loss-scaled in fp16)."""
    with torch.autocast(x.device.type, dtype=autocast, enabled=autocast is not None):
        loss = method.loss(model, x, y, ctx)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return loss


def fit(
    settings: RunSettings,
    method: Method,
    data: DataBundle,
    on_epoch: EpochCallback | None = None,
    resume_from: dict[str, Any] | None = None,
) -> nn.Module:
    """Train `method` under `settings` and return the model.

    After each epoch, `on_epoch(metrics, snapshot, tables)` is called; `snapshot()` returns the
    full training state (model, optimizer, schedule, method state, RNG states, epoch), which
    `resume_from` takes back so a resumed run continues exactly as if never stopped. The
    snapshot is a copy: training on does not change it. `tables` holds the final evaluation's
    per-example tables (e.g. minimum-norm radii) after the last epoch, else nothing; the
    metrics carry the evaluation's attack-failure warnings as `eval_warnings`, and the run's
    cost so far: `train_time_s` (training) and `compute_time_s` (training and evaluation).
    """
    train = settings.train
    device = resolve_device(train.device)
    if train.precision == "fp16" and device.type == "cpu":
        raise ConfigError("train.precision: fp16 needs a GPU and none is visible; allowed: fp32, bf16")
    torch.manual_seed(train.seed)
    memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
    model = build_model(settings.model, data.info).to(device, memory_format=memory_format)
    stepped = training_model(model, train)
    autocast = AUTOCAST_DTYPES.get(train.precision)
    scaler = torch.amp.GradScaler(device.type, enabled=train.precision == "fp16")
    data = data.to(device)
    method.setup(data)
    optimizer = make_optimizer(model, train, method)
    steps_per_epoch = math.ceil(len(data.train_y) / train.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: train.schedule.multiplier(step / steps_per_epoch)
    )
    generator = torch.Generator(device=device).manual_seed(train.seed)
    start_epoch, train_time, compute_time = 0, 0.0, 0.0
    if resume_from is not None:
        model.load_state_dict(resume_from["model"])
        optimizer.load_state_dict(resume_from["optimizer"])
        scheduler.load_state_dict(resume_from["scheduler"])
        method.load_state_dict(resume_from["method"])
        generator.set_state(resume_from["generator"])
        torch.set_rng_state(resume_from["torch_rng"])
        scaler.load_state_dict(resume_from.get("scaler", {}))
        start_epoch = resume_from["epoch"]
        train_time, compute_time = resume_from.get("train_time_s", 0.0), resume_from.get("compute_time_s", 0.0)

    def snapshot() -> dict[str, Any]:
        return copy.deepcopy({
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "method": method.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "scaler": scaler.state_dict(),
            "epoch": epoch + 1,
            "train_time_s": train_time,
            "compute_time_s": compute_time,
        })

    for epoch in range(start_epoch, train.epochs):
        started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        for step, (x, y) in enumerate(train_batches(data, train.batch_size, settings.data.augment, generator)):
            ctx = StepContext(epoch=epoch, step=epoch * steps_per_epoch + step, generator=generator)
            if x.dim() == 4:
                x = x.contiguous(memory_format=memory_format)
            try:
                loss = backward_step(stepped, method, optimizer, scaler, autocast, x, y, ctx)
            except Exception as err:  # torch.compile fails on some models and on double backprop
                if stepped is model:
                    raise
                warnings.warn(f"train.compile: torch.compile failed ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:200]}); training without it", stacklevel=1)
                stepped = model
                loss = backward_step(stepped, method, optimizer, scaler, autocast, x, y, ctx)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            method.after_step(model, ctx)
            loss_sum += loss.detach() * len(y)
        train_loss = float(loss_sum) / len(data.train_y)
        if not math.isfinite(train_loss):
            raise NonFiniteLoss(f"train_loss became {train_loss} in epoch {epoch + 1}")
        epoch_time = time.perf_counter() - started
        train_time += epoch_time
        metrics = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "lr": optimizer.param_groups[0]["lr"],
            "epoch_time_s": epoch_time,
            "train_time_s": train_time,
        }
        tables: Tables = {}
        if settings.eval.due(epoch + 1, train.epochs, settings.rungs):
            eval_started = time.perf_counter()
            result = run_evaluation(model, data, settings.eval, seed=train.seed)
            metrics.update(result.metrics)
            messages = result.warnings
            if epoch + 1 == train.epochs and settings.final_eval is not None:
                final = run_evaluation(model, data, settings.final_eval, seed=train.seed)
                metrics.update({f"final_{k}": v for k, v in final.metrics.items()})
                tables = final.tables
                messages = list(dict.fromkeys([*messages, *final.warnings]))
                if same_examples(settings.eval, settings.final_eval):  # e.g. PGD here against AutoAttack there
                    messages += [w for w in metric_warnings({**result.metrics, **final.metrics}) if w not in messages]
            metrics["eval_time_s"] = time.perf_counter() - eval_started
            compute_time += metrics["eval_time_s"]
            if messages:
                metrics[EVAL_WARNINGS] = "; ".join(messages)
        compute_time += epoch_time
        metrics["compute_time_s"] = compute_time
        if on_epoch is not None:
            on_epoch(metrics, snapshot, tables)
    return model


def load_run_config(path: Path, overrides: list[str]) -> RunConfig:
    """A run YAML (data, model, train, eval, method sections, or a `preset`) with `--set`
    overrides applied."""
    raw = load_yaml(path.read_bytes(), f"config {path}") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config {path}: must hold a mapping of sections")
    return parse(RunConfig, apply_overrides(apply_preset(raw), overrides), "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m trainables.core.train", description="Train one configuration, without Ray."
    )
    parser.add_argument("config", type=Path, help="run YAML: data, model, train, eval, method")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--save", type=Path, help="write the final training state here (torch.save)")
    args = parser.parse_args(argv)
    try:
        config = load_run_config(args.config, args.overrides)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    method = build_method(config.method.name, config.method.hparams)
    data = load_data(config.data)
    final: dict[str, Any] = {}

    def report(metrics: dict[str, Any], snapshot: Callable[[], dict[str, Any]], tables: Tables) -> None:
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()),
              flush=True)
        final["snapshot"] = snapshot

    fit(config, method, data, on_epoch=report)
    if args.save:
        torch.save(final["snapshot"](), args.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
