"""MLflow records of a study: one parent run per study, one child run per trial.

All writes happen on the driver, through a Ray Tune callback (one writer, so a SQLite tracking
URI is safe). Ray's MLflowLoggerCallback is not used because it cannot nest trial runs under a
study run with their final weights, nor find a trial's run again after a restore.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient
from ray import tune

from analysis.records import (
    BUDGET_TAG,
    FAILURE_TAG,
    METHOD_TAG,
    PARENT_TAG,
    ROBUST_METRIC_TAG,
    STUDY_TAG,
    TRIAL_TAG,
)
from trainables.trainable import MODEL_FILE

MAX_PARAM_LENGTH = 6000


def flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    flat = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def as_params(mapping: dict[str, Any]) -> list[Param]:
    return [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten(mapping).items()]


def start_study_run(
    client: MlflowClient,
    experiment: str,
    artifact_location: str | None,
    run_name: str,
    settings: dict[str, Any],
    robust_metric: str,
    spec_file: Path,
) -> str:
    """Create the experiment if needed and the study's parent run; returns the run id."""
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found is not None
        else client.create_experiment(experiment, artifact_location=artifact_location)
    )
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={STUDY_TAG: run_name, ROBUST_METRIC_TAG: robust_metric},
    )
    client.log_batch(run.info.run_id, params=as_params(settings))
    client.log_artifact(run.info.run_id, str(spec_file))
    return run.info.run_id


class TrialTracker(tune.Callback):
    """Mirrors every trial into an MLflow child run of the study's parent run."""

    def __init__(self, tracking_uri: str, parent_run_id: str, metric_names: list[str], epochs: int) -> None:
        self.tracking_uri = tracking_uri
        self.parent_run_id = parent_run_id
        self.metric_names = metric_names
        self.epochs = epochs
        self.trial_runs: dict[str, str] = {}
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None}

    def get_state(self) -> dict[str, Any]:
        return {"trial_runs": dict(self.trial_runs)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.trial_runs = dict(state["trial_runs"])

    def on_trial_start(self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any) -> None:
        if trial.trial_id in self.trial_runs:
            return
        parent = self.client.get_run(self.parent_run_id)
        method = trial.config["method"]
        run = self.client.create_run(
            parent.info.experiment_id,
            run_name=f"{trial.trial_id}-{method}",
            tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id, METHOD_TAG: method},
        )
        self.client.log_batch(run.info.run_id, params=as_params(trial.config))
        self.trial_runs[trial.trial_id] = run.info.run_id

    def on_trial_result(
        self, iteration: int, trials: list, trial: tune.experiment.Trial, result: dict, **info: Any
    ) -> None:
        now = int(time.time() * 1000)
        step = int(result["epoch"])
        metrics = [
            Metric(name, float(result[name]), now, step)
            for name in self.metric_names
            if name in result
        ]
        self.client.log_batch(self.trial_runs[trial.trial_id], metrics=metrics)

    def on_trial_complete(self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any) -> None:
        run_id = self.trial_runs[trial.trial_id]
        full = trial.last_result.get("epoch") == self.epochs
        self.client.set_tag(run_id, BUDGET_TAG, "full" if full else "stopped_early")
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                self.client.log_artifact(run_id, str(Path(folder) / MODEL_FILE), "model")
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration: int, trials: list, trial: tune.experiment.Trial, **info: Any) -> None:
        run_id = self.trial_runs.get(trial.trial_id)
        if run_id is None:
            return
        error = trial.get_error() or "unknown error"
        self.client.set_tag(run_id, FAILURE_TAG, str(error)[-5000:])
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
