"""Running a validated study: the search and the confirm stage on Ray Tune, every trial in
MLflow, and the fronts printed at the end. `study.launch` imports this only after the spec and
the command line passed every check, so a refused input never pays for Ray's and MLflow's imports,
and does so (with `prepare`) in a thread while Ray starts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial

from analysis.pareto import (
    CONFIDENCE,
    StudyAnalysis,
    column,
    confirmed_table,
    front_table,
    robust_label,
    select_for_confirmation,
    study_trials,
)
from analysis.records import CONFIRM, CONFIRM_ROBUST_METRIC_TAG, SEARCH
from analysis.report import write_report
from study.spec import StudySpec
from study.storage import SPEC_FILE, Storage, StudyRecord, check_cluster
from study.tracking import FINISHED, KILLED, RUNNING, TrialTracker, start_study_run, ui_links
from study.tuner import build_confirm_tuner, build_tuner, check_node_resources, restore_tuner, trial_resources
from trainables.core.data import DataBundle, load_data
from trainables.core.registry import ConfigError
from trainables.core.schema import to_dict

TRIAL_METRICS = ["train_loss", "lr", "epoch_time_s", "eval_time_s", "train_time_s", "compute_time_s", "gpu_seconds"]
EXIT_INTERRUPTED = 130
CONFIRM_FOLDER = "-confirm"  # the confirm stage's Tune experiment: beside the search's, named after it
CONFIRM_FILE = "confirm.json"  # in the study folder: the confirm stage's (configuration, seed) list
OPTUNA_FILE = "optuna.db"  # in a local --storage: every study's Optuna study, named as its folder

def print_fronts(study: StudyAnalysis) -> None:
    """The search front (with warnings, certificate violations and failures) and, after a
    confirm stage, the confirmed front."""
    trials, front, configs = study.trials, study.front, study.configs
    print(f"\nPareto front ({len(front)} of {len(study.search)} trials; clean vs {robust_label(study.robust_metric)}; "
          "trials that ran the full budget):")
    table = front_table(front).drop(columns="run_id")
    print(table.to_string(index=False) if not table.empty else "(no trial ran the full budget)")
    for _, trial in front[front["eval_warning"].astype(bool)].iterrows():
        print(f"! {trial['method']} ({trial['run_id'][:8]}): {trial['eval_warning']}")
    if not configs.empty:
        seeds = ", ".join(str(s) for s in sorted(trials.loc[trials["stage"] == CONFIRM, "seed"].dropna().unique()))
        print(f"\nConfirmed front ({len(study.confirmed)} of {len(configs)} configurations; seeds {seeds}; "
              f"clean vs {robust_label(study.confirm_robust_metric)}; mean ± {CONFIDENCE:.0%} Student-t half-width):")
        print(confirmed_table(study.confirmed).to_string(index=False))
    violations = column(trials, "metrics.final_certificate_violations", 0.0).fillna(0)
    for _, trial in trials[violations > 0].iterrows():
        print(f"error: certificate violated: {trial['method']} ({trial['run_id']}): "
              f"{int(violations[trial.name])} adversarial example(s) inside the certified radius")
    failed = int((trials["status"] == "FAILED").sum())
    if failed:
        print(f"{failed} trial(s) failed: see the tag robust_study.failure of their MLflow runs")


def start_study(spec: StudySpec, storage: Storage, tracking_uri: str, client: MlflowClient) -> StudyRecord:
    """A new study folder (resolved spec, study.json) and its MLflow parent run."""
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    spec_text = spec.to_yaml()
    storage.write_text(spec_text, run_name, SPEC_FILE)
    with tempfile.TemporaryDirectory() as folder:
        spec_file = Path(folder) / SPEC_FILE
        spec_file.write_text(spec_text)
        parent = start_study_run(
            client, spec.experiment,
            artifact_location=(Path(storage.root) / "mlartifacts").as_uri() if storage.local else None,
            run_name=run_name,
            settings=to_dict(spec.settings()),
            robust_metric=spec.eval.primary_robust_metric,
            final_robust_metric=spec.final_eval.primary_robust_metric if spec.final_eval else None,
            spec_file=spec_file,
        )
    record = StudyRecord(run_name, parent, tracking_uri, spec.experiment)
    storage.write_record(record)
    return record


def search_stage(spec: StudySpec, data: DataBundle, storage: Storage, record: StudyRecord,
                 optuna_db: optuna.storages.RDBStorage | None, resumed: bool, fit: bool) -> tuple[int, int]:
    """Run (or resume) the search, unless `fit` is off (only reconcile what it recorded), Optuna's
    study kept in `optuna_db` where given; returns (unfinished, failed) trial counts."""
    tracker = TrialTracker(record.tracking_uri, record.parent_run_id, spec.metric_names() + TRIAL_METRICS,
                           spec.train.epochs, spec.searched(), SEARCH, spec.train.seed)
    study_uri = storage.study_uri(record.run_name)
    if fit:
        if resumed:
            tuner = restore_tuner(spec.settings(), data, trial_resources(spec), study_uri)
        else:
            tuner = build_tuner(spec, data, storage.uri, record.run_name, [tracker], optuna_db)
        tuner.fit()
    saved = tune.ExperimentAnalysis(study_uri).trials  # statuses as saved, before Tune's cleanup
    unfinished = tracker.reconcile(saved) + spec.search.num_samples - len(saved)
    return unfinished, sum(trial.status == Trial.ERROR for trial in saved)


def confirmation_points(spec: StudySpec, client: MlflowClient, storage: Storage,
                        record: StudyRecord) -> list[dict[str, Any]]:
    """The confirm stage's trial configs: each chosen search trial's config once per seed,
    seed-major (every configuration's first seed before any second one). Chosen once and saved
    in the study folder (`confirm.json`): a resumed stage goes on with the list it started."""
    if storage.exists(record.run_name, CONFIRM_FILE):
        return json.loads(storage.read_text(record.run_name, CONFIRM_FILE))
    chosen = select_for_confirmation(study_trials(client, record.parent_run_id), spec.confirm.top,
                                     spec.confirm.per_method)
    searched = tune.ExperimentAnalysis(storage.study_uri(record.run_name)).trials
    configs = {trial.trial_id: trial.config for trial in searched}
    points = [{**configs[trial_id], "seed": seed} for seed in spec.confirm.seeds for trial_id in chosen["trial_id"]]
    storage.write_text(json.dumps(points, indent=1), record.run_name, CONFIRM_FILE)
    return points


def confirm_stage(spec: StudySpec, data: DataBundle, storage: Storage, record: StudyRecord,
                  client: MlflowClient) -> int:
    """Run (or resume) the confirm stage; returns how many of its trials are unfinished."""
    points = confirmation_points(spec, client, storage, record)
    if not points:
        print("confirm: the search front is empty, nothing to confirm", flush=True)
        return 0
    seeds = len({point["seed"] for point in points})
    settings = spec.confirm_settings()
    name = record.run_name + CONFIRM_FOLDER
    uri = storage.study_uri(name)
    if settings.final_eval is not None and settings.final_eval.primary_robust_metric is not None:
        client.set_tag(record.parent_run_id, CONFIRM_ROBUST_METRIC_TAG, settings.final_eval.primary_robust_metric)
    print(f"confirm: {len(points) // seeds} configuration(s) x {seeds} seed(s), "
          f"{settings.train.epochs} epochs on {len(data.train_y)} images", flush=True)
    tracker = TrialTracker(record.tracking_uri, record.parent_run_id, settings.metric_names() + TRIAL_METRICS,
                           settings.train.epochs, spec.searched(), CONFIRM)
    if tune.Tuner.can_restore(uri):
        tuner = restore_tuner(settings, data, trial_resources(spec), uri)
    else:
        tuner = build_confirm_tuner(spec, data, storage.uri, name, points, [tracker])
    tuner.fit()
    saved = tune.ExperimentAnalysis(uri).trials
    return tracker.reconcile(saved) + len(points) - len(saved)


@dataclass
class Stores:
    """The study's MLflow client and, for a local --storage, its Optuna database (new SQLite
    databases: seconds of schema migrations)."""

    client: MlflowClient
    optuna: optuna.storages.RDBStorage | None


@dataclass
class Prepared:
    """What a study needs before its first trial, made while Ray starts."""

    storage: Storage
    resumed: StudyRecord | None
    tracking_uri: str
    data: DataBundle
    confirm_data: DataBundle | None
    stores: Stores | None  # opened already where nothing is left to check (a local Ray), else after the checks


def prepare(spec: StudySpec, args: argparse.Namespace, open_stores: bool) -> Prepared:
    """The study's storage, data (a missing data set is refused here, before any store exists)
    and, where `open_stores`, its MLflow and Optuna stores, created where they do not exist."""
    storage = Storage(args.storage)
    resumed = storage.latest_record(spec.name) if args.resume else None
    tracking_uri = args.tracking_uri or (resumed.tracking_uri if resumed else storage.default_tracking_uri())
    data = load_data(spec.data)
    confirm_data = load_confirm_data(spec) if spec.confirm is not None and not args.no_confirm else None
    stores = open_study_stores(storage, tracking_uri) if open_stores else None
    return Prepared(storage, resumed, tracking_uri, data, confirm_data, stores)


def open_study_stores(storage: Storage, tracking_uri: str) -> Stores:
    """The study's MLflow client and (local --storage) Optuna database, each created where it
    does not exist yet."""
    if storage.local:
        storage.fs.create_dir(storage.root, recursive=True)
    client = MlflowClient(tracking_uri)
    client.search_experiments(max_results=1)
    optuna_db = optuna.storages.RDBStorage(f"sqlite:///{storage.path(OPTUNA_FILE)}") if storage.local else None
    return Stores(client, optuna_db)


def run_study(spec: StudySpec, args: argparse.Namespace, prepared: Prepared) -> int:
    """Run (or resume) `spec` on the Ray this process is connected to, to the end: the search,
    then the confirm stage where the spec has one (and neither --no-confirm nor an unfinished
    search stops it); shuts Ray down and returns the exit status."""
    storage, resumed, tracking_uri = prepared.storage, prepared.resumed, prepared.tracking_uri
    try:
        check_cluster(storage, tracking_uri)
        check_node_resources(spec)
        stores = prepared.stores or open_study_stores(storage, tracking_uri)
        client = stores.client
        record = resumed or start_study(spec, storage, tracking_uri, client)
        if resumed:
            client.update_run(record.parent_run_id, status=RUNNING)
        print(f"study {record.run_name}: MLflow run {record.parent_run_id} in experiment "
              f"{record.experiment!r} at {tracking_uri}", flush=True)
        print(ui_links(tracking_uri, client.get_run(record.parent_run_id).info.experiment_id,
                       record.parent_run_id), flush=True)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's classic progress table, whose columns the study picks
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # epochs between evaluations report no metrics
        unfinished, errors = search_stage(spec, prepared.data, storage, record, stores.optuna, resumed is not None,
                                          not args.confirm_only)
        # an unfinished search's front waits for it
        if prepared.confirm_data is not None and (args.confirm_only or not unfinished):
            unfinished += confirm_stage(spec, prepared.confirm_data, storage, record, client)
        client.set_terminated(record.parent_run_id, KILLED if unfinished else FINISHED)
    finally:
        ray.shutdown()
    with tempfile.TemporaryDirectory() as folder:
        print_fronts(write_report(client, record.parent_run_id, Path(folder)))
    if unfinished:
        print(f"\n{unfinished} trial(s) unfinished: continue with python -m study.launch {args.spec} "
              f"--storage {args.storage} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if errors == spec.search.num_samples else 0


def load_confirm_data(spec: StudySpec) -> DataBundle:
    """The confirm stage's data (its own subset where it sets one), checked before anything starts."""
    try:
        return load_data(spec.confirm_settings().data)
    except ConfigError as err:
        raise ConfigError(f"confirm.subset: {err}") from err
