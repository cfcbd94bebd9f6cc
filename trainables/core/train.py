"""The training loop, top to bottom: build, (resume,) train an epoch, evaluate, report, repeat.

Pure torch: no Ray, no MLflow. `fit` is what the Ray trainable calls; `python -m
trainables.core.train RUN.yaml` runs one configuration from the command line. The settings it
reads are in `trainables.core.settings`.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.core.data import DataBundle, load_data, train_batches
from trainables.core.evaluation import EXAMPLES, metric_warnings, run_evaluation
from trainables.core.methods import Method, StepContext, build_method
from trainables.core.models import build_model
from trainables.core.presets import apply_preset
from trainables.core.registry import ConfigError
from trainables.core.schema import apply_overrides, load_yaml, parse
from trainables.core.settings import (
    EVAL_WARNINGS,
    TRAIN_WARNING,
    RunConfig,
    RunSettings,
    TrainConfig,
    require_fp16_gpu,
    resolve_device,
    same_examples,
)

Tables = dict[str, dict[str, torch.Tensor]]
EpochCallback = Callable[[dict[str, Any], Callable[[], dict[str, Any]], Tables], None]
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or inf: the run cannot continue."""


def make_optimizer(model: nn.Module, train: TrainConfig, method: Method) -> torch.optim.Optimizer:
    wd = method.optimizer_weight_decay()
    if train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=wd)
    return torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=wd)


@dataclass
class TrainingState:
    """Everything a run changes as it trains: `snapshot()` copies it (training on does not change
    the copy) and `restore(saved)` takes such a copy back, so a resumed run continues exactly as
    if it had never stopped."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    method: Method
    generator: torch.Generator
    scaler: torch.amp.GradScaler
    epoch: int = 0  # epochs done
    train_time_s: float = 0.0
    compute_time_s: float = 0.0  # training and evaluation

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "method": self.method.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "train_time_s": self.train_time_s,
            "compute_time_s": self.compute_time_s,
        })

    def restore(self, saved: dict[str, Any]) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.method.load_state_dict(saved["method"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.scaler.load_state_dict(saved.get("scaler", {}))
        self.epoch = saved["epoch"]
        self.train_time_s, self.compute_time_s = saved.get("train_time_s", 0.0), saved.get("compute_time_s", 0.0)


class Stepper:
    """One optimization step of the method's loss: under autocast in bf16 or fp16 (loss-scaled in
    fp16), through `torch.compile` of the model where `train.compile` asks (the state, evaluation
    and certificates stay with the model itself). Compilation fails on some models and on double
    backprop: then the step goes on without it, with one warning."""

    def __init__(self, state: TrainingState, train: TrainConfig) -> None:
        self.state = state
        self.stepped = torch.compile(state.model) if train.compile else state.model
        self.autocast = AUTOCAST_DTYPES.get(train.precision)
        self.memory_format = torch.channels_last if train.channels_last else torch.contiguous_format

    def __call__(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        try:
            loss = self.backward(x, y, ctx)
        except Exception as err:
            if self.stepped is self.state.model:
                raise
            warnings.warn(f"train.compile: torch.compile failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0][:200]}); training without it", stacklevel=1)
            self.stepped = self.state.model
            loss = self.backward(x, y, ctx)
        state = self.state
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.scheduler.step()
        state.method.after_step(state.model, ctx)
        return loss

    def backward(self, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        state = self.state
        with torch.autocast(x.device.type, dtype=self.autocast, enabled=self.autocast is not None):
            loss = state.method.loss(self.stepped, x, y, ctx)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        return loss


def build_state(settings: RunSettings, method: Method, data: DataBundle, device: torch.device) -> TrainingState:
    """A fresh run's model (seeded by train.seed), optimizer, per-step schedule and generator."""
    train = settings.train
    torch.manual_seed(train.seed)
    memory_format = torch.channels_last if train.channels_last else torch.contiguous_format
    model = build_model(settings.model, data.info).to(device, memory_format=memory_format)
    scaler = torch.amp.GradScaler(device.type, enabled=train.precision == "fp16")
    method.setup(data)
    optimizer = make_optimizer(model, train, method)
    steps_per_epoch = math.ceil(len(data.train_y) / train.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: train.schedule.multiplier(step / steps_per_epoch)
    )
    generator = torch.Generator(device=device).manual_seed(train.seed)
    return TrainingState(model, optimizer, scheduler, method, generator, scaler)


def train_epoch(state: TrainingState, step: Stepper, data: DataBundle, settings: RunSettings) -> dict[str, Any]:
    """One pass over the training data; the epoch's mean loss (one host sync), learning rate and time."""
    train, epoch = settings.train, state.epoch
    started = time.perf_counter()
    steps_per_epoch = math.ceil(len(data.train_y) / train.batch_size)
    state.model.train()
    loss_sum = torch.zeros((), device=data.train_y.device)
    for i, (x, y) in enumerate(train_batches(data, train.batch_size, settings.data.augment, state.generator)):
        loss = step(x, y, StepContext(epoch=epoch, step=epoch * steps_per_epoch + i, generator=state.generator))
        loss_sum += loss.detach() * len(y)
    train_loss = float(loss_sum) / len(data.train_y)
    if not math.isfinite(train_loss):
        raise NonFiniteLoss(f"train_loss became {train_loss} in epoch {epoch + 1}")
    epoch_time = time.perf_counter() - started
    state.train_time_s += epoch_time
    state.compute_time_s += epoch_time
    return {"epoch": epoch + 1, "train_loss": train_loss, "lr": state.optimizer.param_groups[0]["lr"],
            "epoch_time_s": epoch_time, "train_time_s": state.train_time_s}


def evaluate(model: nn.Module, data: DataBundle, settings: RunSettings, final: bool,
             on_progress: Callable[[str], None] | None = None) -> tuple[dict[str, Any], Tables]:
    """The epoch's evaluation and, after the last epoch, the final one (its metrics and its
    per-example records as `final_*`, its other per-example tables); the epoch's per-example
    records as `examples`; their attack-failure warnings as one `eval_warnings` string, with the
    indicators that compare the two where both measured the same examples (PGD here against
    AutoAttack there)."""
    started = time.perf_counter()
    result = run_evaluation(model, data, settings.eval, seed=settings.train.seed, on_progress=on_progress)
    metrics, messages = dict(result.metrics), result.warnings
    tables = {EXAMPLES: result.tables[EXAMPLES]}
    if final and settings.final_eval is not None:
        strong = run_evaluation(model, data, settings.final_eval, seed=settings.train.seed, on_progress=on_progress)
        metrics.update({f"final_{k}": v for k, v in strong.metrics.items()})
        tables.update(strong.final_tables())
        messages = list(dict.fromkeys([*messages, *strong.warnings]))
        if same_examples(settings.eval, settings.final_eval):
            messages += [w for w in metric_warnings({**result.metrics, **strong.metrics}) if w not in messages]
    metrics["eval_time_s"] = time.perf_counter() - started
    if messages:
        metrics[EVAL_WARNINGS] = "; ".join(messages)
    return metrics, tables


def fit(
    settings: RunSettings,
    method: Method,
    data: DataBundle,
    on_epoch: EpochCallback | None = None,
    resume_from: dict[str, Any] | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> nn.Module:
    """Train `method` under `settings` and return the model.

    After each epoch, `on_epoch(metrics, snapshot, tables)` is called; `snapshot()` returns the
    full training state (`TrainingState.snapshot`), which `resume_from` takes back. `tables`
    holds an evaluated epoch's per-example records (`examples`) and after the last epoch the
    final evaluation's (`final_examples`) and its other per-example tables (e.g. minimum-norm
    radii); nothing after an epoch without evaluation. The metrics carry the evaluation's attack-failure warnings as
    `eval_warnings`, and the run's cost so far: `train_time_s` (training) and `compute_time_s`
    (training and evaluation). `on_phase(text)` hears what the run is doing: `training`,
    `evaluating`, and an evaluation's progress (`evaluating: autoattack_l2, 250/500 points left`).
    """
    train = settings.train
    device = resolve_device(train.device)
    require_fp16_gpu(train.precision, device.type == "cuda", " and none is visible")
    data = data.to(device)
    state = build_state(settings, method, data, device)
    if resume_from is not None:
        state.restore(resume_from)
    step = Stepper(state, train)
    tell = on_phase or (lambda phase: None)
    losses: list[float] | None = [] if state.epoch == 0 else None  # a resumed run's first epochs are behind it
    while state.epoch < train.epochs:
        tell("training")
        metrics = train_epoch(state, step, data, settings)
        state.epoch += 1
        if losses is not None and len(losses) < STALL_EPOCHS:
            losses.append(float(metrics["train_loss"]))
            warning = stall_warning(losses, min(STALL_EPOCHS, train.epochs), data.info.num_classes)
            if warning is not None:
                metrics[TRAIN_WARNING] = warning
        tables: Tables = {}
        if settings.eval.due(state.epoch, train.epochs, settings.rungs):
            tell("evaluating")
            measured, tables = evaluate(state.model, data, settings, final=state.epoch == train.epochs,
                                        on_progress=lambda message: tell(f"evaluating: {message}"))
            state.compute_time_s += measured["eval_time_s"]
            metrics.update(measured)
        metrics["compute_time_s"] = state.compute_time_s
        if on_epoch is not None:
            on_epoch(metrics, state.snapshot, tables)
    return state.model


STALL_EPOCHS = 3  # a network whose loss has not moved by 1 % after these epochs is not learning


def stall_warning(losses: list[float], epochs: int, classes: int) -> str | None:
    """The warning for a run whose training loss stayed within 1 % of its first epoch's through
    `epochs` (>= 2) epochs, said once, at the last of them; None otherwise."""
    if epochs < 2 or len(losses) != epochs or any(abs(loss - losses[0]) > 0.01 * abs(losses[0]) for loss in losses):
        return None
    chance = f", log({classes}) = {math.log(classes):.3f} at chance" if classes > 1 else ""
    return (f"training loss flat at {losses[-1]:.3f} through epoch {epochs}{chance}: the network does not learn; "
            "for a 1-Lipschitz network use LBDN's warm-up schedule or lr <= 0.001")


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
    method = build_method(config.method.name, config.method.options)
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
