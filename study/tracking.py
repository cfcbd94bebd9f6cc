"""MLflow records of a study: one parent run per study, one child run per trial.

All writes happen on the driver, through a Ray Tune callback (one writer). Ray's
MLflowLoggerCallback is not used because it cannot nest trial runs under a study run with their
final weights, nor find a trial's run again after a restore, which exact resume needs: a trial's
run is found again by its tag, and epochs already logged are not logged twice.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial

from analysis.records import (
    BUDGET_TAG,
    CONFIG_TAG,
    EVAL_WARNING_TAG,
    EXPERIMENT_KIND_TAG,
    FAILURE_TAG,
    FAILURES_TAG,
    FINAL_ROBUST_METRIC_TAG,
    METHOD_TAG,
    NODE_TAG,
    ORPHAN_TAG,
    PARENT_TAG,
    ROBUST_METRIC_TAG,
    ROUND_TAG,
    SEARCH,
    SEARCHED_TAG,
    SEED_TAG,
    STAGE_TAG,
    STUDY_TAG,
    TRIAL_TAG,
    child_runs,
)
from study.preflight import deleted_experiment
from trainables.core.settings import EVAL_WARNINGS
from trainables.records import write_tables
from trainables.trial import EVAL_TABLES, FIGURES, MODEL_FILE, NODE_KEY, TrialConfig

MAX_PARAM_LENGTH = 6000
RUNNING, FINISHED, FAILED, KILLED = (RunStatus.to_string(s) for s in (
    RunStatus.RUNNING, RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))
EXPERIMENT_KIND = "custom_model_development"  # a training experiment, not a GenAI one


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
    final_robust_metric: str | None = None,
) -> str:
    """Create the experiment if needed (marked a model-training experiment) and the study's
    parent run; returns the run id."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        experiment_id = client.create_experiment(experiment, artifact_location=artifact_location,
                                                 tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    elif found.lifecycle_stage == "deleted":  # MLflow would refuse every run in it with a traceback
        raise deleted_experiment(experiment, found.experiment_id)
    else:
        experiment_id = found.experiment_id
        if EXPERIMENT_KIND_TAG not in found.tags:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    run = client.create_run(
        experiment_id,
        run_name=run_name,
        tags={STUDY_TAG: run_name, ROBUST_METRIC_TAG: robust_metric,
              **({FINAL_ROBUST_METRIC_TAG: final_robust_metric} if final_robust_metric else {})},
    )
    client.log_batch(run.info.run_id, params=as_params(settings))
    client.log_artifact(run.info.run_id, str(spec_file))
    return run.info.run_id


def trial_params(trial: Trial, config: TrialConfig) -> dict[str, Any]:
    """A trial's MLflow params: its configuration as the trial contract records it and the
    resources it ran with."""
    resources = {k.lower(): v for k, v in trial.placement_group_factory.required_resources.items()}
    return {**config.params(), "resources": resources}


def log_latest(client: MlflowClient, run_id: str, metrics: dict[str, float]) -> None:
    """Log `metrics` to a trial run at its last epoch, so they are its latest values even where
    its own final evaluation logged metrics of the same name (a later evaluation, a race's block)."""
    epoch = max((m.step for m in client.get_metric_history(run_id, "train_loss")), default=0)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])


def log_tables(client: MlflowClient, run_id: str, tables: dict, kept: pd.DataFrame | None) -> None:
    """An evaluation's per-example tables logged to a trial run under `eval/`: its records joined
    into `kept` (the run's records so far: a later evaluation extends them, never replaces them),
    its other tables beside them."""
    with tempfile.TemporaryDirectory() as folder:
        write_tables(tables, Path(folder) / EVAL_TABLES, kept)
        client.log_artifacts(run_id, str(Path(folder) / EVAL_TABLES), EVAL_TABLES)


def ui_links(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """Where a study's numbers are in MLflow's UI: the experiment's runs view (a server's own
    address, or a local `mlflow ui`'s) and the study run."""
    if tracking_uri.startswith(("http://", "https://")):
        base, start = tracking_uri.rstrip("/"), "open"
    else:
        base, start = "http://127.0.0.1:5000", f"run mlflow ui --backend-store-uri {tracking_uri} --port 5000, open"
    runs = f"{base}/#/experiments/{experiment_id}/runs"
    return (f"MLflow: {start} {runs} (once: switch the sidebar to \"Model training\"); "
            f"the study run: {runs}/{run_id}")


def error_summary(trial: Trial) -> str:
    """The last lines of a failed trial's traceback: the exception and its message. Tune
    writes it to the trial's local folder before it calls the callbacks."""
    local = Path(trial.error_file) if trial.error_file else None
    text = (local.read_text() if local is not None and local.is_file() else str(trial.get_error())).strip()
    return "\n".join(text.splitlines()[-3:])[-4000:]


class TrialTracker(tune.Callback):
    """Mirrors every trial of one stage (search or confirm) into an MLflow child run of the
    study's parent run, named by its method and searched values, tagged with the stage, its
    configuration's id, its seed (a confirmation trial's `seed`, else the study's `seed`) and
    which hyperparameters were searched (`searched`: method label -> names).

    Run status follows the trial: RUNNING while it trains, FAILED (reason tagged) when it errors,
    RUNNING again when Tune retries it from its checkpoint, FINISHED when done, KILLED when the
    study is interrupted before it finished.
    """

    def __init__(self, tracking_uri: str, parent_run_id: str, metric_names: list[str], epochs: int,
                 searched: dict[str, list[str]], stage: str = SEARCH, seed: int = 0, race_round: int = 0) -> None:
        self.tracking_uri = tracking_uri
        self.race_round = race_round  # a racing confirm stage's round (its own Tune experiment); 0: none
        self.searched = searched
        self.parent_run_id = parent_run_id
        self.metric_names = metric_names
        self.epochs = epochs
        self.stage = stage
        self.seed = seed
        self.trial_runs: dict[str, str] = {}
        self.logged_epochs: dict[str, int] = {}
        self.warned: set[str] = set()  # runs whose latest evaluation raised attack-failure warnings
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "trial_runs": {}, "logged_epochs": {}, "warned": set()}

    def run_for(self, trial: Trial) -> str:
        """The trial's run: known, found by its tag (after a driver restart), or created."""
        if trial.trial_id in self.trial_runs:
            return self.trial_runs[trial.trial_id]
        found = child_runs(self.client, self.parent_run_id, trial.trial_id, self.stage)
        if found:
            run_id = found[0].info.run_id
            history = self.client.get_metric_history(run_id, "train_loss")
            self.logged_epochs[run_id] = max((m.step for m in history), default=0)
        else:
            config = TrialConfig.from_tune(trial.config, self.stage)
            searched = self.searched[config.label]
            run = self.client.create_run(
                self.client.get_run(self.parent_run_id).info.experiment_id,
                run_name=config.run_name(searched),
                tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial.trial_id, METHOD_TAG: config.label,
                      STAGE_TAG: config.stage, CONFIG_TAG: config.config_id(), SEED_TAG: str(config.seed_or(self.seed)),
                      SEARCHED_TAG: ",".join(searched),
                      **({ROUND_TAG: str(self.race_round)} if self.race_round else {})},
            )
            run_id = run.info.run_id
            self.client.log_batch(run_id, params=as_params(trial_params(trial, config)))
            self.logged_epochs[run_id] = 0
        self.trial_runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        run_id = self.run_for(trial)
        if self.client.get_run(run_id).info.status != RUNNING:
            self.client.update_run(run_id, status=RUNNING)

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        run_id = self.run_for(trial)
        epoch = int(result["epoch"])
        if epoch <= self.logged_epochs[run_id]:
            return  # re-run after a restore from an older checkpoint: that epoch is recorded
        now = int(time.time() * 1000)
        metrics = [Metric(name, float(result[name]), now, epoch) for name in self.metric_names if name in result]
        tags = [RunTag(NODE_TAG, result[NODE_KEY])]
        if result.get(EVAL_WARNINGS):  # the tag holds the latest evaluation's warnings
            tags.append(RunTag(EVAL_WARNING_TAG, result[EVAL_WARNINGS][:MAX_PARAM_LENGTH]))
            self.warned.add(run_id)
        elif "eval_time_s" in result and run_id in self.warned:
            self.client.delete_tag(run_id, EVAL_WARNING_TAG)
            self.warned.discard(run_id)
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.logged_epochs[run_id] = epoch

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.finish(trial)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.fail(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.fail(trial)

    def reconcile(self, trials: list[Trial]) -> int:
        """Make every run's status match its trial's as last saved by Tune, also for events a
        killed driver never saw; trials neither finished nor failed (an interrupted study) are
        KILLED. Returns how many trials are unfinished."""
        self.retire_orphans({trial.trial_id for trial in trials})
        unfinished = 0
        for trial in trials:
            run_id = self.run_for(trial)
            status = self.client.get_run(run_id).info.status
            if trial.status == Trial.TERMINATED:
                if status != FINISHED:
                    self.finish(trial)
            elif trial.status == Trial.ERROR:
                if status != FAILED:
                    self.fail(trial)
            else:
                unfinished += 1
                if status == RUNNING:
                    self.client.set_terminated(run_id, KILLED)
        return unfinished

    def retire_orphans(self, known: set[str]) -> None:
        """Runs of this stage's trials that a killed driver started after Tune last saved its
        state: Tune no longer knows them and samples anew, so they are marked KILLED, tagged,
        and soft-deleted (kept, restorable with `mlflow runs restore`) to leave one run per trial."""
        for run in child_runs(self.client, self.parent_run_id, stage=self.stage):
            mine = run.data.tags.get(ROUND_TAG, "0") == str(self.race_round)  # each round is its own Tune experiment
            if mine and run.data.tags.get(TRIAL_TAG) not in known:
                self.client.set_tag(run.info.run_id, ORPHAN_TAG, "started by a driver that died before Tune saved it")
                self.client.set_terminated(run.info.run_id, KILLED)
                self.client.delete_run(run.info.run_id)

    def finish(self, trial: Trial) -> None:
        run_id = self.run_for(trial)
        full = trial.last_result.get("epoch") == self.epochs
        self.client.set_tag(run_id, BUDGET_TAG, "full" if full else "stopped_early")
        if trial.checkpoint is not None:
            with trial.checkpoint.as_directory() as folder:
                self.client.log_artifact(run_id, str(Path(folder) / MODEL_FILE), "model")
                for extra in (FIGURES, EVAL_TABLES):
                    if (Path(folder) / extra).is_dir():
                        self.client.log_artifacts(run_id, str(Path(folder) / extra), extra)
        self.client.set_terminated(run_id, FINISHED)

    def fail(self, trial: Trial) -> None:
        run_id = self.run_for(trial)
        self.client.set_tag(run_id, FAILURE_TAG, error_summary(trial))
        self.client.set_tag(run_id, FAILURES_TAG, str(trial.num_failures))
        self.client.set_terminated(run_id, FAILED)
