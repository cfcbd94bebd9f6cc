"""Running a validated study: its stages (`study.stages`: the search, then the confirm stage)
on Ray Tune, every trial in MLflow, and the fronts printed at the end. `study.launch` imports
this only after the spec and the command line passed every check, so a refused input never pays
for Ray's and MLflow's imports, and does so (with `prepare`) in a thread while Ray starts.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import ray
from mlflow.tracking import MlflowClient

from analysis.costs import describe_costs
from analysis.pareto import print_fronts
from analysis.report import write_report
from study import STARTED
from study.costs import StudyClock
from study.race import Race
from study.spec import StudySpec
from study.stages import ConfirmStage, SearchStage, StageInputs, StudyContext, run_stage
from study.storage import SPEC_FILE, Storage, StudyRecord, check_cluster
from study.tracking import (
    FINISHED,
    KILLED,
    RUNNING,
    TrackingUnavailable,
    seed_sqlite_store,
    start_study_run,
    ui_links,
)
from study.tuner import check_node_resources, trial_resources
from study.writer import limit_client_retries
from trainables.core.data import load_data
from trainables.core.registry import ConfigError
from trainables.core.schema import to_dict
from trainables.core.settings import RunSettings
from trainables.phases import open_board

EXIT_INTERRUPTED = 130
EXIT_TRACKING_AWAY = 3
OPTUNA_FILE = "optuna.db"  # in a local --storage: every study's Optuna study, named as its folder


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
    search: StageInputs
    confirm: StageInputs | None
    stores: Stores | None  # opened already where nothing is left to check (a local Ray), else after the checks


def prepare(spec: StudySpec, args: argparse.Namespace, open_stores: bool) -> Prepared:
    """The study's storage, data (a missing data set is refused here, before any store exists)
    and, where `open_stores`, its MLflow and Optuna stores, created where they do not exist."""
    storage = Storage(args.storage)
    resumed = storage.latest_record(spec.name) if args.resume else None
    tracking_uri = args.tracking_uri or (resumed.tracking_uri if resumed else storage.default_tracking_uri())
    search = stage_inputs(SearchStage.settings_for(spec))
    confirm = (stage_inputs(ConfirmStage.settings_for(spec), "confirm.subset")
               if spec.confirm is not None and not args.no_confirm else None)
    if confirm is not None:
        check_examples(spec, confirm)
    stores = open_study_stores(storage, tracking_uri) if open_stores else None
    return Prepared(storage, resumed, tracking_uri, search, confirm, stores)


def open_study_stores(storage: Storage, tracking_uri: str) -> Stores:
    """The study's MLflow client and (local --storage) Optuna database, each created where it
    does not exist yet."""
    if storage.local:
        storage.fs.create_dir(storage.root, recursive=True)
    seed_sqlite_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    client.search_experiments(max_results=1)
    optuna_db = optuna.storages.RDBStorage(f"sqlite:///{storage.path(OPTUNA_FILE)}") if storage.local else None
    return Stores(client, optuna_db)


def run_study(spec: StudySpec, args: argparse.Namespace, prepared: Prepared) -> int:
    """Run (or resume) `spec` on the Ray this process is connected to, to the end: the search,
    then the confirm stage where the spec has one (and neither --no-confirm nor an unfinished
    search stops it); shuts Ray down and returns the exit status."""
    storage, resumed, tracking_uri = prepared.storage, prepared.resumed, prepared.tracking_uri
    limit_client_retries()
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
        study = StudyContext(spec, storage, record, client, trial_resources(spec))
        open_board()
        search = SearchStage(study, prepared.search, stores.optuna)
        clock = StudyClock(STARTED)
        clock.lap("start-up")
        outcome = run_stage(search, fit=not args.confirm_only)
        unfinished = outcome.unfinished
        clock.search(client, record.parent_run_id, search.final.tally if search.final else None)
        # an unfinished search's front waits for it
        if prepared.confirm is not None and (args.confirm_only or not unfinished):
            confirm = ConfirmStage(study, prepared.confirm, search)
            unfinished += run_stage(confirm).unfinished
            race = Race(study, confirm, prepared.confirm)
            if not unfinished and race.racing and confirm.points:
                unfinished += race.run()
            clock.lap("confirm stage")
        clock.log(client, record.parent_run_id)
        client.set_terminated(record.parent_run_id, KILLED if unfinished else FINISHED)
    except TrackingUnavailable as err:
        print(f"error: {err}; the trials' results are kept in {storage.uri}. Once MLflow answers, re-log them "
              f"and go on: python -m study.launch {args.spec} --storage {args.storage} --resume", file=sys.stderr)
        return EXIT_TRACKING_AWAY
    finally:
        ray.shutdown()
    with tempfile.TemporaryDirectory() as folder:
        print_fronts(write_report(client, record.parent_run_id, Path(folder)))
    clock.lap("report")
    clock.log(client, record.parent_run_id)
    print(describe_costs(client.get_run(record.parent_run_id).data.metrics), flush=True)
    if unfinished:
        print(f"\n{unfinished} trial(s) unfinished: continue with python -m study.launch {args.spec} "
              f"--storage {args.storage} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if outcome.failed == spec.search.num_samples else 0


def check_examples(spec: StudySpec, confirm: StageInputs) -> None:
    """A confirm stage cannot race on more examples than its evaluation's split holds."""
    judged = confirm.settings.final_eval or confirm.settings.eval
    held = len(confirm.data.split(judged.split)[1])
    limit = spec.confirm.max_examples
    if limit is not None and limit > held:
        raise ConfigError(f"confirm.max_examples: {limit}, but the {judged.split} split holds {held} examples; "
                          f"allowed: at most {held}")


def stage_inputs(settings: RunSettings, key: str | None = None) -> StageInputs:
    """A stage's settings and its data, loaded now so a missing data set (or, for a stage with
    its own subset, `key`) is refused before anything starts."""
    try:
        return StageInputs(settings, load_data(settings.data))
    except ConfigError as err:
        raise ConfigError(f"{key}: {err}" if key else str(err)) from err
