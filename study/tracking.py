"""MLflow records of a study: one parent run per study, one child run per trial.

All writes happen on the driver, through a Ray Tune callback (one writer). Ray's
MLflowLoggerCallback is not used because it cannot nest trial runs under a study run with their
final weights, nor find a trial's run again after a restore, which exact resume needs: a trial's
run is found again by its tag, and epochs already logged are not logged twice.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
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
    TRAIN_WARNING_TAG,
    TRIAL_TAG,
    child_runs,
)
from study.preflight import deleted_experiment
from study.writer import TrackingWriter, writer_for
from trainables.core.settings import EVAL_WARNINGS, TRAIN_WARNING
from trainables.records import write_tables
from trainables.trial import EVAL_TABLES, FIGURES, MODEL_FILE, NODE_KEY, TrialConfig

MAX_PARAM_LENGTH = 6000
RUNNING, FINISHED, FAILED, KILLED = (RunStatus.to_string(s) for s in (
    RunStatus.RUNNING, RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))
EXPERIMENT_KIND = "custom_model_development"  # a training experiment, not a GenAI one


def store_templates() -> Path:
    """Where empty MLflow stores, one per MLflow version, are kept for new studies to copy."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "robust-study"


def seed_sqlite_store(tracking_uri: str) -> None:
    """Where `tracking_uri` names a SQLite file that does not exist yet, copy there an empty store
    already at this MLflow's schema: MLflow's own creation replays every schema migration (1.5 s
    of a study's start-up on 2 cores), now once per MLflow version on a machine. The template
    holds no default experiment: MLflow adds it, with this store's artifact location, when it
    opens the copy. Where the cache cannot be written, MLflow creates the store itself."""
    if not tracking_uri.startswith("sqlite:///") or "?" in tracking_uri:  # query options: left to MLflow
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    if path.exists():
        return
    template = store_templates() / f"mlflow-{mlflow.__version__}.db"
    copy = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        if not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=template.parent) as folder:
                fresh = Path(folder) / "mlflow.db"
                MlflowClient(f"sqlite:///{fresh}").search_experiments(max_results=1)
                with sqlite3.connect(fresh) as db:
                    db.execute("DELETE FROM experiments WHERE experiment_id = 0")
                db.close()
                os.replace(fresh, template)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, copy)
        os.replace(copy, path)  # never a half-copied store, even where two studies start at once
    except OSError:
        copy.unlink(missing_ok=True)


def trial_run_key(parent_run_id: str, stage: str, race_round: int, trial_id: str) -> str:
    """How the tracking writer names a trial's run (`TrackingWriter.runs` holds its id once made)."""
    return f"{parent_run_id}/{stage}/{race_round}/{trial_id}"


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
    study is interrupted before it finished. Every write goes through the store's writer thread
    (study.writer), so Tune's loop never waits on MLflow; `reconcile` waits for the writes at the
    stage's end and re-logs from Tune's result files whatever MLflow still lacks.
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
        self.requested: set[str] = set()  # trials whose run this tracker has asked the writer for
        self.warned: set[str] = set()  # trials whose latest evaluation raised attack-failure warnings
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def writer(self) -> TrackingWriter:
        return writer_for(self.tracking_uri)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "requested": set(), "warned": set()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A tracker saved by 0.3 (with its run and epoch caches, which the writer now holds)
        restores as one of this version."""
        obsolete = ("trial_runs", "logged_epochs")
        self.__dict__.update({"requested": set(), "warned": set(),
                              **{k: v for k, v in state.items() if k not in obsolete}})

    def key(self, trial_id: str) -> str:
        return trial_run_key(self.parent_run_id, self.stage, self.race_round, trial_id)

    def ensure_run(self, trial: Trial) -> str:
        """Ask the writer for the trial's run (found by its tag after a driver restart, else
        created) before any write to it; returns the run's key."""
        key = self.key(trial.trial_id)
        if trial.trial_id not in self.requested:
            config = TrialConfig.from_tune(trial.config, self.stage)
            params = as_params(trial_params(trial, config))
            self.writer.call(lambda client: self.open_run(client, trial.trial_id, config, params))
            self.requested.add(trial.trial_id)
        return key

    def open_run(self, client: MlflowClient, trial_id: str, config: TrialConfig, params: list[Param]) -> str:
        """The trial's run: known to the writer, found by its tag, or created (in the writer's
        thread, or in `reconcile` for a trial this process never saw)."""
        key, writer = self.key(trial_id), self.writer
        if key in writer.runs:
            return writer.runs[key]
        found = child_runs(client, self.parent_run_id, trial_id, self.stage)
        if found:
            run_id = found[0].info.run_id
            if not found[0].data.params:  # created, then the store went away before its params were logged
                client.log_batch(run_id, params=params)
            history = client.get_metric_history(run_id, "train_loss")
            writer.logged[key] = max((m.step for m in history), default=0)
        else:
            searched = self.searched[config.label]
            run = client.create_run(
                client.get_run(self.parent_run_id).info.experiment_id,
                run_name=config.run_name(searched),
                tags={PARENT_TAG: self.parent_run_id, TRIAL_TAG: trial_id, METHOD_TAG: config.label,
                      STAGE_TAG: config.stage, CONFIG_TAG: config.config_id(), SEED_TAG: str(config.seed_or(self.seed)),
                      SEARCHED_TAG: ",".join(searched),
                      **({ROUND_TAG: str(self.race_round)} if self.race_round else {})},
            )
            run_id = run.info.run_id
            client.log_batch(run_id, params=params)
            writer.logged[key] = 0
        writer.runs[key] = run_id
        return run_id

    def run_for(self, trial: Trial) -> str:
        """The trial's run id, now (at the stage's end, after the writer's queue is written)."""
        config = TrialConfig.from_tune(trial.config, self.stage)
        return self.open_run(self.client, trial.trial_id, config, as_params(trial_params(trial, config)))

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        key = self.ensure_run(trial)
        self.writer.call(lambda client: set_status(client, self.writer.runs.get(key), RUNNING))

    on_trial_restore = on_trial_start

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info: Any) -> None:
        key = self.ensure_run(trial)
        metrics, tags = self.report(result)
        if result.get(EVAL_WARNINGS):  # the tag holds the latest evaluation's warnings
            self.warned.add(trial.trial_id)
        elif "eval_time_s" in result and trial.trial_id in self.warned:
            self.writer.call(lambda client: delete_tag(client, self.writer.runs.get(key), EVAL_WARNING_TAG))
            self.warned.discard(trial.trial_id)
        self.writer.log(key, metrics, tags, int(result["epoch"]))

    def report(self, result: dict) -> tuple[list[Metric], list[RunTag]]:
        """A reported result's metrics (at its epoch) and tags (its node, its evaluation's warnings)."""
        epoch, now = int(result["epoch"]), int(result.get("timestamp", time.time()) * 1000)
        metrics = [Metric(name, float(result[name]), now, epoch) for name in self.metric_names if name in result]
        tags = [RunTag(NODE_TAG, str(result.get(NODE_KEY, "")))]
        if result.get(EVAL_WARNINGS):
            tags.append(RunTag(EVAL_WARNING_TAG, result[EVAL_WARNINGS][:MAX_PARAM_LENGTH]))
        if result.get(TRAIN_WARNING):
            tags.append(RunTag(TRAIN_WARNING_TAG, result[TRAIN_WARNING][:MAX_PARAM_LENGTH]))
        return metrics, tags

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.finish(trial)

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.fail(trial)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.fail(trial)

    def reconcile(self, trials: list[Trial], wait_s: float | None = None) -> int:
        """Wait for the writer (at most `wait_s`; TrackingUnavailable after), re-log from Tune's
        result files the epochs MLflow lacks (writes lost to a kill or to an overflowing queue),
        and make every run's status match its trial's as last saved by Tune, also for events a
        killed driver never saw; trials neither finished nor failed (an interrupted study) are
        KILLED. Returns how many trials are unfinished."""
        if not self.writer.flush(wait_s):
            raise TrackingUnavailable(self.tracking_uri, wait_s)
        self.retire_orphans({trial.trial_id for trial in trials})
        unfinished = 0
        for trial in trials:
            run_id = self.run_for(trial)
            self.relog(trial, run_id)
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
        if not self.writer.flush(wait_s):
            raise TrackingUnavailable(self.tracking_uri, wait_s)
        return unfinished

    def relog(self, trial: Trial, run_id: str) -> None:
        """Log the trial's reported epochs that its run lacks, from Tune's result file."""
        results = tune_results(trial)
        if not results:
            return
        logged = {m.step for m in self.client.get_metric_history(run_id, "train_loss")}
        missing = [r for r in results if int(r.get("epoch", 0)) not in logged and "train_loss" in r]
        key = self.key(trial.trial_id)
        for result in missing:
            metrics, tags = self.report(result)
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
        if missing:
            self.writer.logged[key] = max(self.writer.logged.get(key, 0), *(int(r["epoch"]) for r in missing))

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
        key = self.ensure_run(trial)
        full = trial.last_result.get("epoch") == self.epochs
        checkpoint = trial.checkpoint

        def write(client: MlflowClient) -> None:
            run_id = self.writer.runs.get(key)
            if run_id is None:
                return
            client.set_tag(run_id, BUDGET_TAG, "full" if full else "stopped_early")
            if checkpoint is not None:
                with checkpoint.as_directory() as folder:
                    client.log_artifact(run_id, str(Path(folder) / MODEL_FILE), "model")
                    for extra in (FIGURES, EVAL_TABLES):
                        if (Path(folder) / extra).is_dir():
                            client.log_artifacts(run_id, str(Path(folder) / extra), extra)
            client.set_terminated(run_id, FINISHED)

        self.writer.call(write)

    def fail(self, trial: Trial) -> None:
        key = self.ensure_run(trial)
        summary, failures = error_summary(trial), str(trial.num_failures)

        def write(client: MlflowClient) -> None:
            run_id = self.writer.runs.get(key)
            if run_id is not None:
                client.log_batch(run_id, tags=[RunTag(FAILURE_TAG, summary), RunTag(FAILURES_TAG, failures)])
                client.set_terminated(run_id, FAILED)

        self.writer.call(write)


class TrackingUnavailable(Exception):
    """MLflow did not take the stage's writes within the wait: the trials' results are in Tune's
    storage, and `--resume` re-logs them once the store answers."""

    def __init__(self, tracking_uri: str, wait_s: float | None) -> None:
        super().__init__(f"MLflow at {tracking_uri} has not taken the study's writes for {wait_s:.0f} s")


def set_status(client: MlflowClient, run_id: str | None, status: str) -> None:
    if run_id is not None and client.get_run(run_id).info.status != status:
        client.update_run(run_id, status=status)


def delete_tag(client: MlflowClient, run_id: str | None, key: str) -> None:
    if run_id is not None:
        client.delete_tag(run_id, key)


def tune_results(trial: Trial) -> list[dict]:
    """Every result Tune saved for `trial` (its result.json; empty where it is not on this disk)."""
    for folder in (trial.local_path, trial.path):
        path = Path(folder or "") / "result.json"
        if folder and path.is_file():
            return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return []
