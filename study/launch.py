"""`python -m study.launch SPEC.yaml`: run a study and print its Pareto front.

Validates the spec before anything starts, loads the data once, runs the trials on a local Ray
(or the cluster at --address, or the one `ray job submit` names), records every trial in MLflow,
and prints the front of the trials that ran the full budget. With a `confirm:` section, a
confirm stage then retrains the front's best configurations once per seed and prints the
confirmed front (mean ± 95% interval). `--resume` continues the newest interrupted study of the
same name from its checkpoints, in whichever stage it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import ray
import torch
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
from study.space import describe_space
from study.spec import StudySpec, load_spec
from study.storage import SPEC_FILE, Storage, StudyRecord, check_cluster
from study.tracking import FINISHED, KILLED, RUNNING, TrialTracker, start_study_run, ui_links
from study.tuner import build_confirm_tuner, build_tuner, check_node_resources, restore_tuner, trial_resources
from trainables.core.data import DataBundle, load_data
from trainables.core.registry import ConfigError
from trainables.core.schema import clip, short, to_dict

EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130
TRIAL_METRICS = ["train_loss", "lr", "epoch_time_s", "eval_time_s", "train_time_s", "compute_time_s", "gpu_seconds"]
CONFIRM_FOLDER = "-confirm"  # the confirm stage's Tune experiment: beside the search's, named after it
CONFIRM_FILE = "confirm.json"  # in the study folder: the confirm stage's (configuration, seed) list
OPTUNA_FILE = "optuna.db"  # in a local --storage: every study's Optuna study, named as its folder


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.launch", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="study YAML, e.g. search_spaces/quickstart.yaml")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--address", help="Ray cluster to attach to (auto or HOST:PORT); default: a local Ray")
    parser.add_argument("--storage", default="runs",
                        help="output folder or URI (s3://...): Tune results, checkpoints, default MLflow database")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///STORAGE/mlflow.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest interrupted study of this name under --storage")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved spec and search space, start nothing")
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--confirm-only", action="store_true",
                       help="with --resume: run (or finish) the spec's confirm stage on the study's search front")
    stage.add_argument("--no-confirm", action="store_true", help="skip the spec's confirm stage")
    return parser.parse_args(argv)


def check_stage_arguments(spec: StudySpec, args: argparse.Namespace) -> None:
    if args.confirm_only and not args.resume:
        raise ConfigError("--confirm-only: needs --resume (it confirms the front of an existing study)")
    if args.confirm_only and spec.confirm is None:
        raise ConfigError("--confirm-only: the spec has no confirm section; add one, e.g. confirm: {seeds: [0, 1, 2]}")


def check_local_device(spec: StudySpec, args: argparse.Namespace) -> None:
    """A study run on this machine (no cluster address) can only use its devices: refuse a
    GPU setting without a GPU now rather than in every trial."""
    if args.address or os.environ.get("RAY_ADDRESS"):
        return
    gpus = torch.cuda.device_count()
    spec.resources.require_within(os.cpu_count() or 1, gpus, "the study runs on this machine, which")
    if gpus:
        return
    if spec.train.device == "cuda":
        raise ConfigError("train.device: cuda, but the study runs on this machine, which has no GPU; "
                          "allowed: auto, cpu")
    if spec.train.precision == "fp16":
        raise ConfigError("train.precision: fp16 needs a GPU, and the study runs on this machine, which has none; "
                          "allowed: fp32, bf16")


STORAGE_SCHEMES = ("file", "s3", "gs", "hdfs", "abfs")  # what pyarrow's filesystems open
TRACKING_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def answers(host: str, port: int, option: str, timeout: float = 5.0) -> None:
    """Refuse `option` unless something accepts a TCP connection at host:port within `timeout`."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"{option}: nothing answers at {host}:{port} ({err.strerror or err}); "
                          f"start it or correct the address") from err


def check_locations(args: argparse.Namespace) -> None:
    """--storage, --tracking-uri and --address, each checked before anything starts: a known
    scheme, a creatable and writable folder, a server and a cluster that answer. Credentials in
    the tracking URI move to MLflow's environment variables, so the URI that is printed and
    saved with the study holds none."""
    scheme = args.storage.split("://", 1)[0] if "://" in args.storage else ""
    if scheme and scheme not in STORAGE_SCHEMES:
        raise ConfigError(f"--storage: unknown scheme {short(scheme)}; allowed: a folder, "
                          + ", ".join(f"{s}://..." for s in STORAGE_SCHEMES))
    if scheme and scheme != "file" and not args.tracking_uri:
        raise ConfigError(f"--tracking-uri: required when --storage is a URI ({clip(args.storage)}); start an "
                          "MLflow server (see the README's cluster recipe) and pass its http:// address")
    if not scheme:
        folder = Path(args.storage).expanduser().resolve()
        existing = next(p for p in [folder, *folder.parents] if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"--storage: {existing} is a file; allowed: a folder (existing or to be created)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"--storage: {existing} is not writable; allowed: a folder you can write to")
    if args.tracking_uri:
        parsed = urllib.parse.urlsplit(args.tracking_uri)
        if parsed.scheme and parsed.scheme.split("+")[0] not in TRACKING_SCHEMES:
            raise ConfigError(f"--tracking-uri: unknown scheme {short(parsed.scheme)}; allowed: a folder, "
                              + ", ".join(f"{s}://..." for s in TRACKING_SCHEMES))
        if parsed.username or parsed.password:
            os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parsed.username or "")
            os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parsed.password or "")
            args.tracking_uri = urllib.parse.urlunsplit(parsed._replace(netloc=parsed.netloc.rpartition("@")[2]))
        if parsed.scheme in ("http", "https"):
            answers(parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80), "--tracking-uri")
    if args.address and args.address not in ("auto", "local") and not args.address.startswith("ray://"):
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--address: {short(args.address)} is not HOST:PORT; allowed: auto, HOST:PORT")
        answers(host, int(port), "--address")


def resolve_spec(args: argparse.Namespace) -> StudySpec:
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"search.num_samples={args.num_samples}")
    return load_spec(args.spec, overrides)


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


def search_stage(spec: StudySpec, data: DataBundle, storage: Storage, record: StudyRecord, resumed: bool,
                 fit: bool) -> tuple[int, int]:
    """Run (or resume) the search, unless `fit` is off (only reconcile what it recorded);
    returns (unfinished, failed) trial counts."""
    tracker = TrialTracker(record.tracking_uri, record.parent_run_id, spec.metric_names() + TRIAL_METRICS,
                           spec.train.epochs, spec.searched(), SEARCH, spec.train.seed)
    study_uri = storage.study_uri(record.run_name)
    if fit:
        if resumed:
            tuner = restore_tuner(spec.settings(), data, trial_resources(spec), study_uri)
        else:
            optuna_url = f"sqlite:///{storage.path(OPTUNA_FILE)}" if storage.local else None
            tuner = build_tuner(spec, data, storage.uri, record.run_name, [tracker], optuna_url)
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


def run_study(spec: StudySpec, args: argparse.Namespace) -> int:
    """Run (or resume) `spec` to the end: the search, then the confirm stage where the spec has
    one (and neither --no-confirm nor an unfinished search stops it); returns the exit status."""
    storage = Storage(args.storage)
    resumed = storage.latest_record(spec.name) if args.resume else None
    tracking_uri = args.tracking_uri or (resumed.tracking_uri if resumed else storage.default_tracking_uri())
    confirming = spec.confirm is not None and not args.no_confirm
    data = load_data(spec.data)
    confirm_data = load_confirm_data(spec) if confirming else None
    # "local" starts a fresh Ray even where a stale /tmp/ray/ray_current_cluster names a dead one
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    try:
        check_cluster(storage, tracking_uri)
        check_node_resources(spec)
        client = MlflowClient(tracking_uri)
        record = resumed or start_study(spec, storage, tracking_uri, client)
        if resumed:
            client.update_run(record.parent_run_id, status=RUNNING)
        print(f"study {record.run_name}: MLflow run {record.parent_run_id} in experiment "
              f"{record.experiment!r} at {tracking_uri}", flush=True)
        print(ui_links(tracking_uri, client.get_run(record.parent_run_id).info.experiment_id,
                       record.parent_run_id), flush=True)
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # Tune's classic progress table, whose columns the study picks
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # epochs between evaluations report no metrics
        unfinished, errors = search_stage(spec, data, storage, record, resumed is not None, not args.confirm_only)
        if confirming and (args.confirm_only or not unfinished):  # an unfinished search's front waits for it
            unfinished += confirm_stage(spec, confirm_data, storage, record, client)
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_locations(args)
        spec = resolve_spec(args)
        check_stage_arguments(spec, args)
        check_local_device(spec, args)
        if args.dry_run:
            print("# resolved spec")
            print(spec.to_yaml())
            print("# search space")
            print(describe_space(spec.methods.methods))
            return 0
        return run_study(spec, args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
