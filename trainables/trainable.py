"""The Ray Tune function trainable: a thin adapter from a trial's config to `core.fit`.

One `tune.report` per epoch with the epoch's metrics (and the Ray node that ran it; on a GPU
`gpu_seconds`, the trial's compute seconds times its GPU share) and a checkpoint holding the
full training state (`state.pt`) and the model weights alone (`model.pt`, what MLflow stores at
the end).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch
from ray import tune

from trainables.core.data import DataBundle
from trainables.core.figures import is_one_dimensional_fit, one_dimensional_fit
from trainables.core.methods import build_method
from trainables.core.models import build_model
from trainables.core.train import RunSettings, Tables, fit, resolve_device

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"
FIGURES = "figures"  # a checkpoint's figures, logged with the model when the trial finishes
EVAL_TABLES = "eval"  # the final evaluation's per-example tables (CSV), logged likewise


def trial_resources() -> dict[str, float]:
    return tune.get_context().get_trial_resources().required_resources


def trial_threads() -> int:
    """The CPUs Ray reserved for this trial (at least 1), for torch's intra-op threads."""
    return max(1, int(trial_resources().get("CPU", 1)))


def train_trial(config: dict[str, Any], settings: RunSettings, data: DataBundle) -> None:
    """Train the method that `config` names (`{"method": label, label: {hyperparameters}}`, with
    `registered_method` when the label is a variant of a registered method); `model.*` and
    `train.*` hyperparameters override the study's model options and train settings, and
    `seed` (a confirmation run's) the study's train.seed."""
    torch.set_num_threads(trial_threads())
    node_id = ray.get_runtime_context().get_node_id()
    gpu_share = trial_resources().get("GPU", 0.0) if resolve_device(settings.train.device).type == "cuda" else 0.0
    label = config["method"]
    settings, hparams = settings.with_overrides(config.get(label, {}))
    if "seed" in config:
        settings = replace(settings, train=replace(settings.train, seed=config["seed"]))
    method = build_method(config.get("registered_method", label), hparams)
    resume_from = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_from = torch.load(Path(folder) / STATE_FILE, weights_only=True)

    def report(metrics: dict[str, Any], snapshot: Callable[[], dict[str, Any]], tables: Tables) -> None:
        state = snapshot()
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            torch.save(state["model"], Path(folder) / MODEL_FILE)
            write_tables(tables, Path(folder) / EVAL_TABLES)
            if metrics["epoch"] == settings.train.epochs and is_one_dimensional_fit(data):
                draw_fit(state["model"], Path(folder) / FIGURES / "fit.png")
            cost = {"gpu_seconds": metrics["compute_time_s"] * gpu_share} if gpu_share else {}
            tune.report({**metrics, **cost, "node_id": node_id}, checkpoint=tune.Checkpoint.from_directory(folder))

    def draw_fit(weights: dict[str, torch.Tensor], path: Path) -> None:
        model = build_model(settings.model, data.info)
        model.load_state_dict(weights)
        path.parent.mkdir()
        title = f"{label}: {', '.join(f'{k}={v}' for k, v in config.get(label, {}).items())}"
        one_dimensional_fit(model, data, title[:120], path)

    fit(settings, method, data, on_epoch=report, resume_from=resume_from)


def write_tables(tables: Tables, folder: Path) -> None:
    """Each per-example table as `folder/NAME.csv` (a header row, one row per example)."""
    for name, columns in tables.items():
        folder.mkdir(exist_ok=True)
        frame = pd.DataFrame({column: values.numpy() for column, values in columns.items()})
        frame.insert(0, "example", range(len(frame)))
        frame.to_csv(folder / f"{name}.csv", index=False)
