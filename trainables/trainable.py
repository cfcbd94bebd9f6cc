"""The Ray Tune function trainable: a thin adapter from a trial's config to `core.fit`.

One `tune.report` per epoch with the epoch's metrics (and the Ray node that ran it; on a GPU
`gpu_seconds`, the trial's compute seconds times its GPU share) and a checkpoint holding the
files `trainables.trial` names: the full training state and the model weights alone (what
MLflow stores at the end).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from trainables.core.data import DataBundle
from trainables.core.evaluation import EvalResult, run_evaluation
from trainables.core.figures import is_one_dimensional_fit, one_dimensional_fit
from trainables.core.methods import build_method
from trainables.core.models import build_model
from trainables.core.settings import RunSettings, resolve_device
from trainables.core.train import Tables, fit
from trainables.phases import phase_teller
from trainables.records import write_tables
from trainables.trial import EVAL_TABLES, FIGURES, MODEL_FILE, NODE_KEY, STATE_FILE, TrialConfig


def trial_resources() -> dict[str, float]:
    return tune.get_context().get_trial_resources().required_resources


def trial_threads() -> int:
    """The CPUs Ray reserved for this trial (at least 1), for torch's intra-op threads."""
    return max(1, int(trial_resources().get("CPU", 1)))


def train_trial(config: dict[str, Any], settings: RunSettings, data: DataBundle, stage: str) -> None:
    """Train the trial `config` describes (a `TrialConfig` in Tune's form) under the study's
    settings with the trial's overrides and seed applied."""
    torch.set_num_threads(trial_threads())
    node_id = ray.get_runtime_context().get_node_id()
    gpu_share = trial_resources().get("GPU", 0.0) if resolve_device(settings.train.device).type == "cuda" else 0.0
    trial = TrialConfig.from_tune(config, stage)
    settings = trial.apply(settings)
    method = build_method(trial.method, trial.hparams)
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
            tune.report({**metrics, **cost, NODE_KEY: node_id}, checkpoint=tune.Checkpoint.from_directory(folder))

    def draw_fit(weights: dict[str, torch.Tensor], path: Path) -> None:
        model = build_model(settings.model, data.info)
        model.load_state_dict(weights)
        path.parent.mkdir()
        title = f"{trial.label}: {', '.join(f'{k}={v}' for k, v in trial.values.items())}"
        one_dimensional_fit(model, data, title[:120], path)

    on_phase = phase_teller(tune.get_context().get_trial_id(), f"trial {trial.label}")
    fit(settings, method, data, on_epoch=report, resume_from=resume_from, on_phase=on_phase)



def evaluate_checkpoint(config: dict[str, Any], settings: RunSettings, data: DataBundle, stage: str,
                        checkpoint: tune.Checkpoint, start: int, stop: int | None,
                        known: dict[str, torch.Tensor] | None = None,
                        progress_key: str | None = None) -> tuple[EvalResult, float]:
    """A trained trial's judging evaluation (the final one where the settings have it, else the
    epoch's) on examples `start` .. `stop` of the evaluation order (None: the evaluation's own),
    from its checkpoint's weights, with the examples `known` broken (`run_evaluation`) counted
    as broken: the result (its records named as a final evaluation's where it is one) and its
    seconds. Its progress goes to the phase board under `progress_key` where one is given. As a
    Ray task: a racing confirm stage's blocks, the search's final evaluations."""
    trial = TrialConfig.from_tune(config, stage)
    settings = trial.apply(settings)
    torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
    device = resolve_device(settings.train.device)
    with checkpoint.as_directory() as folder:
        weights = torch.load(Path(folder) / MODEL_FILE, map_location=device, weights_only=True)
    data = data.to(device)
    model = build_model(settings.model, data.info).to(device)
    model.load_state_dict(weights)
    judged = settings.final_eval or settings.eval
    judged = replace(judged, examples=judged.examples if stop is None else stop, skip=start)
    started = time.perf_counter()
    tell = phase_teller(progress_key, f"{stage} {trial.label}") if progress_key else None
    on_progress = (lambda message: tell(f"final eval: {message}")) if tell else None
    result = run_evaluation(model, data, judged, seed=settings.train.seed, known=known, on_progress=on_progress)
    seconds = time.perf_counter() - started
    if settings.final_eval is not None:
        result = replace(result, tables=result.final_tables())
    return result, seconds
