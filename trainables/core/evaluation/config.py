"""An evaluation: which items run on which examples, and `evaluate`, which runs them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from trainables.core.data import DataBundle, eval_batches
from trainables.core.evaluation.attack import AttackEval
from trainables.core.evaluation.base import EVALUATIONS, EXAMPLES, FINAL_EXAMPLES, Batch, correct_predictions
from trainables.core.evaluation.indicators import GRADIENT_SHARE, dead_gradients, metric_warnings
from trainables.core.registry import ConfigError
from trainables.core.schema import INTERNAL, named_mapping, parse, require, require_seed


class EvalItem:
    """An `eval.items` entry, dispatched on its `kind` to the registered evaluation."""

    @classmethod
    def from_mapping(cls, data: Any, path: str) -> Any:
        kind, _ = named_mapping(data, path, "kind", EVALUATIONS)
        return parse(EVALUATIONS.get(kind, f"{path}.kind"), data, path)


@dataclass
class EvalConfig:
    """What is measured on the first `examples` of `split` in a fixed order (the class-balanced
    permutation `sample_seed` draws, the same for every run, so more examples later extend the
    set and every configuration is judged on the same ones), after the last epoch and, by
    `every`: `rungs` (default), the epochs where a study's scheduler compares trials (ASHA's
    rungs; none under FIFO; every epoch for a run outside a study), or every k epochs."""

    every: int | Literal["rungs"] = "rungs"
    split: Literal["val", "test"] = "test"
    examples: int | None = 1000
    sample_seed: int = 0
    skip: int = field(default=0, metadata={INTERNAL: True})  # set by a racing stage: judge examples skip .. examples
    batch_size: int = 500
    items: list[EvalItem] = field(default_factory=lambda: [AttackEval()])
    robust_metric: str | None = None

    def due(self, epoch: int, epochs: int, rungs: list[int] | None) -> bool:
        """Is there an evaluation after (1-based) `epoch` of `epochs`? `rungs`: the scheduler's
        comparison epochs, None outside a study."""
        if epoch == epochs:
            return True
        if self.every == "rungs":
            return rungs is None or epoch in rungs
        return epoch % self.every == 0

    def check(self, path: str) -> None:
        require(self.every == "rungs" or self.every >= 1, f"{path}.every", f"must be >= 1 or rungs, got {self.every}")
        require(self.examples is None or self.examples > 0, f"{path}.examples",
                f"must be a positive count or null (all), got {self.examples}")
        require(self.batch_size >= 1, f"{path}.batch_size", f"must be >= 1, got {self.batch_size}")
        require_seed(self.sample_seed, f"{path}.sample_seed")
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

    def ball(self, metric: str) -> tuple[str, float] | None:
        """(norm, eps) of a robust accuracy measured in a norm ball, None for other metrics."""
        return next((item.balls()[metric] for item in self.items if metric in item.balls()), None)

    @property
    def needs_bound(self) -> bool:
        return any(item.needs_bound for item in self.items)

    def check_classifier(self, dataset: str, path: str) -> None:
        """The strong attacks move class decisions: refuse them on a one-output regression."""
        for i, item in enumerate(self.items):
            require(not (item.needs_classes and dataset == "square_wave"), f"{path}.items[{i}].kind",
                    f"{item.kind} attacks a classifier; square_wave is a one-output regression "
                    "(allowed there: fit, certified, lipschitz_estimate, attack, noise)")


@dataclass
class EvalResult:
    """An evaluation's metrics, its per-example tables (name -> column -> values, in the order
    evaluated), among them the records (`examples`: the example's index in the split, its label,
    and per accuracy metric whether it was correct: the metrics are their means; min-norm and
    certified radii where measured), and its attack-failure warnings."""

    metrics: dict[str, float]
    tables: dict[str, dict[str, torch.Tensor]]
    warnings: list[str]

    def final_tables(self) -> dict[str, dict[str, torch.Tensor]]:
        """The tables of a final evaluation, its records named as such (`final_examples`)."""
        return {FINAL_EXAMPLES if name == EXAMPLES else name: columns for name, columns in self.tables.items()}


def evaluation_order(y: torch.Tensor, sample_seed: int) -> torch.Tensor:
    """The order in which a split's examples are evaluated: each class's examples shuffled, then
    taken in turns (one of each class, the classes in a shuffled order, and again), so that any
    first N is class-balanced and the first N + k extend the first N. A regression target (a
    float label) is shuffled plainly. The same for every run of a seed: a function of the
    labels alone."""
    labels = y.cpu().numpy()
    rng = np.random.RandomState(sample_seed)
    if not np.issubdtype(labels.dtype, np.integer):
        return torch.from_numpy(rng.permutation(len(labels))).to(y.device)
    classes = np.unique(labels)
    class_turn = dict(zip(classes, rng.permutation(len(classes)), strict=True))
    rank = np.empty(len(labels), dtype=np.int64)
    for label in classes:
        members = np.flatnonzero(labels == label)
        rank[rng.permutation(members)] = np.arange(len(members))
    turn = np.array([class_turn[label] for label in labels]) if len(labels) else np.zeros(0, dtype=np.int64)
    order = np.lexsort((turn, rank))  # by rank within the class, then the class's turn
    return torch.from_numpy(order).to(y.device)


@torch.no_grad()
def run_evaluation(model: nn.Module, data: DataBundle, config: EvalConfig, progress: bool = False,
                   seed: int = 0, known: dict[str, torch.Tensor] | None = None,
                   on_progress: Callable[[str], None] | None = None) -> EvalResult:
    """Every item of `config` on the fixed evaluation subset, in eval mode, with one generator
    seeded afresh from the run's `seed` (the same noise, starts and targets every time for one
    seed; other draws for another, on the same examples); `progress` shows a bar of batches.
    `known`: per norm, per example of the split, a radius within which an earlier evaluation of
    these weights verified an adversarial example (inf: none); the items count those as broken.
    `on_progress(text)` hears each item's start on each batch: its name and the points left."""
    x_all, y_all = data.split(config.split)
    index = evaluation_order(y_all, config.sample_seed)[config.skip: config.examples]
    known = {norm: radius.to(y_all.device)[index] for norm, radius in (known or {}).items()}
    x_all, y_all = x_all[index], y_all[index]
    if len(y_all) == 0:
        raise ConfigError(f"eval.split: the {config.split} split is empty (set data.val > 0 or use test)")
    was_training = model.training
    model.eval()
    generator = torch.Generator(device=x_all.device).manual_seed(seed)
    maxima = set().union(*(item.maxima() for item in config.items))
    raw_counts = set().union(*(item.counts() for item in config.items))
    check_gradients = any(item.uses_gradients for item in config.items)
    totals: dict[str, torch.Tensor] = {}
    columns: dict[str, dict[str, list[torch.Tensor]]] = {}
    warnings: list[str] = []
    batches = tqdm(eval_batches(x_all, y_all, config.batch_size), total=math.ceil(len(y_all) / config.batch_size),
                   desc="evaluate", unit="batch", disable=not progress)
    for start, (x, y) in zip(range(0, len(y_all), config.batch_size), batches, strict=True):
        logits = model(x)
        batch = Batch(model, x, y, logits, generator, columns, warnings, seed,
                      {norm: radius[start:start + len(y)] for norm, radius in known.items()})
        counts = {"clean_acc": correct_predictions(logits, y)}
        if check_gradients and logits.shape[1] > 1:
            counts["dead_gradients"] = dead_gradients(model, x, y).sum()
        for item in config.items:
            if on_progress is not None:
                on_progress(f"{getattr(item, 'prefix', item.kind)}, {len(y_all) - start}/{len(y_all)} points left")
            counts.update(item.correct(batch))
        for name, count in counts.items():
            if count.dtype == torch.bool:  # which examples are correct: a column of the records
                batch.record(EXAMPLES, **{name: count})
                count = count.sum()
            combine = torch.maximum if name in maxima else torch.add
            totals[name] = combine(totals[name], count) if name in totals else count
    model.train(was_training)
    columns[EXAMPLES] = {"index": [index.cpu()], "label": [y_all.cpu()], **columns[EXAMPLES]}
    unnormalized = maxima | raw_counts
    metrics = {name: float(total) / (1 if name in unnormalized else len(y_all)) for name, total in totals.items()}
    tables = {name: {column: torch.cat(parts) for column, parts in table.items()} for name, table in columns.items()}
    for item in config.items:
        metrics.update(item.derived(metrics, tables))
    if config.primary_robust_metric is not None:
        metrics["robust_acc"] = metrics[config.primary_robust_metric]
    dead = metrics.pop("dead_gradients", 0.0)
    if dead > GRADIENT_SHARE:
        warnings.append(f"zero or non-finite input gradients on {dead:.1%} of points: gradient attacks are blind "
                        "there (masked or saturated gradients; a softmax output?)")
    warnings += [w for w in metric_warnings(metrics) if w not in warnings]
    return EvalResult(metrics, tables, warnings)


def evaluate(model: nn.Module, data: DataBundle, config: EvalConfig) -> dict[str, float]:
    """The metrics of `run_evaluation`, `robust_acc` included."""
    return run_evaluation(model, data, config).metrics
