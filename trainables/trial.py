"""What a trial is: one configuration (a method label with its hyperparameters and its model /
train overrides) and, in a stage after the search, a seed; and what a trial leaves behind (its
checkpoint's files).

Tune carries a trial's configuration as a plain dict, `{"method": label, label: {name: value},
"registered_method": name, "seed": n}` (the last two only where they apply); this module is the
one place that writes or reads that dict. No Ray here: the Ray adapter, the search space and
the tracking all go through `TrialConfig`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from analysis.names import short_name, short_value

if TYPE_CHECKING:  # the contract itself imports no torch: the launcher and analysis read it cheaply
    from trainables.core.settings import RunSettings

METHOD_KEY = "method"  # the label: a registered method's name, or a variant's (`sgr_pgd`)
REGISTERED_KEY = "registered_method"  # the registered method of a variant label
SEED_KEY = "seed"  # a trial that sets train.seed (a confirmation run's)
OVERRIDE_PREFIXES = ("model.", "train.")  # hyperparameters that set the study's model and train settings

NODE_KEY = "node_id"  # a trial's report: the Ray node that ran the epoch

STATE_FILE = "state.pt"  # a checkpoint's full training state (`TrainingState.snapshot`)
MODEL_FILE = "model.pt"  # a checkpoint's model weights alone: what MLflow stores at the end
FIGURES = "figures"  # a checkpoint's figures, logged with the model when the trial finishes
EVAL_TABLES = "eval"  # the evaluations' per-example records and tables, logged likewise
RECORDS_FILE = "examples.parquet"  # in EVAL_TABLES: one row per evaluated example (trainables.records)


@dataclass(frozen=True)
class TrialConfig:
    """One trial's configuration. `hparams` are the method's own hyperparameters, `overrides`
    the `model.*` / `train.*` settings this entry changes; `seed` is None where the study's
    train.seed holds; `stage` is the stage that runs it (search, confirm, ...)."""

    label: str
    stage: str
    registered: str = ""  # the registered method; empty: the label itself
    hparams: dict[str, Any] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None

    @property
    def method(self) -> str:
        """The registered method the trial trains."""
        return self.registered or self.label

    @classmethod
    def from_tune(cls, config: dict[str, Any], stage: str) -> TrialConfig:
        label = config[METHOD_KEY]
        values = config.get(label, {})
        return cls(
            label=label,
            stage=stage,
            registered=config.get(REGISTERED_KEY, ""),
            hparams={k: v for k, v in values.items() if not k.startswith(OVERRIDE_PREFIXES)},
            overrides={k: v for k, v in values.items() if k.startswith(OVERRIDE_PREFIXES)},
            seed=config.get(SEED_KEY),
        )

    def to_tune(self) -> dict[str, Any]:
        config: dict[str, Any] = {METHOD_KEY: self.label}
        if self.values:
            config[self.label] = self.values
        if self.registered:
            config[REGISTERED_KEY] = self.registered
        if self.seed is not None:
            config[SEED_KEY] = self.seed
        return config

    @property
    def values(self) -> dict[str, Any]:
        """Every value the search chose or the spec fixed for this entry, overrides included."""
        return {**self.hparams, **self.overrides}

    def with_seed(self, seed: int, stage: str) -> TrialConfig:
        """The same configuration trained with another seed, in `stage`."""
        return replace(self, seed=seed, stage=stage)

    def seed_or(self, study_seed: int) -> int:
        """The seed this trial trains with: its own, else the study's train.seed."""
        return study_seed if self.seed is None else self.seed

    def config_id(self) -> str:
        """One id per configuration (method and hyperparameters, whatever the seed and stage):
        the same on a search trial and on each seed that confirms it."""
        config = {k: v for k, v in self.to_tune().items() if k != SEED_KEY}
        text = json.dumps(config, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:12]

    def run_name(self, searched: list[str]) -> str:
        """`pgd_l2-eps0.969`: the label and the values the search chose (and `-seed1` where the
        trial sets a seed), what the MLflow runs table lists."""
        values = self.values
        parts = [self.label, *(f"{short_name(p)}{short_value(values[p])}" for p in searched if p in values)]
        if self.seed is not None:
            parts.append(f"seed{self.seed}")
        return "-".join(parts)

    def apply(self, settings: RunSettings) -> RunSettings:
        """The study's settings with this trial's model / train overrides and seed."""
        settings, _ = settings.with_overrides(self.overrides)
        return replace(settings, train=replace(settings.train, seed=self.seed_or(settings.train.seed)))

    def params(self) -> dict[str, Any]:
        """How MLflow records the configuration: the label, the registered method of a variant,
        and every value under `hp` (overrides included)."""
        registered = {REGISTERED_KEY: self.registered} if self.registered else {}
        return {METHOD_KEY: self.label, **registered, "hp": self.values}
