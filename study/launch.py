"""`python -m study.launch SPEC.yaml`: run a study and print its Pareto front.

Validates the spec before anything starts, loads the data once, runs the trials on a local Ray
(or the cluster at --address, or the one `ray job submit` names), records every trial in MLflow,
and prints the front of the trials that ran the full budget. `--resume` continues the newest
interrupted study of the same name from its checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import ray
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial

from analysis.pareto import column, front_table, robust_label, study_front
from study.space import describe_space
from study.spec import StudySpec, load_spec
from study.storage import SPEC_FILE, Storage, StudyRecord, check_cluster
from study.tracking import FINISHED, KILLED, RUNNING, TrialTracker, start_study_run
from study.tuner import build_tuner, restore_tuner
from trainables.core.data import load_data
from trainables.core.registry import ConfigError
from trainables.core.schema import to_dict

EXIT_BAD_INPUT, EXIT_INTERRUPTED = 2, 130
TRIAL_METRICS = ["train_loss", "lr", "epoch_time_s", "eval_time_s"]


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
    return parser.parse_args(argv)


def resolve_spec(args: argparse.Namespace) -> StudySpec:
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"search.num_samples={args.num_samples}")
    return load_spec(args.spec, overrides)


def print_front(client: MlflowClient, parent_run_id: str) -> None:
    trials, front, robust_metric = study_front(client, parent_run_id)
    print(f"\nPareto front ({len(front)} of {len(trials)} trials; clean vs {robust_label(robust_metric)}; "
          "trials that ran the full budget):")
    table = front_table(front).drop(columns="run_id")
    print(table.to_string(index=False) if not table.empty else "(no trial ran the full budget)")
    for _, trial in front[front["eval_warning"].astype(bool)].iterrows():
        print(f"! {trial['method']} ({trial['run_id'][:8]}): {trial['eval_warning']}")
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


def run_study(spec: StudySpec, args: argparse.Namespace) -> int:
    """Run (or resume) `spec` to the end; returns the exit status."""
    storage = Storage(args.storage)
    resumed = storage.latest_record(spec.name) if args.resume else None
    tracking_uri = args.tracking_uri or (resumed.tracking_uri if resumed else storage.default_tracking_uri())
    data = load_data(spec.data)
    # "local" starts a fresh Ray even where a stale /tmp/ray/ray_current_cluster names a dead one
    ray.init(address=args.address or os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False)
    try:
        check_cluster(storage, tracking_uri)
        client = MlflowClient(tracking_uri)
        record = resumed or start_study(spec, storage, tracking_uri, client)
        tracker = TrialTracker(tracking_uri, record.parent_run_id,
                               spec.metric_names() + TRIAL_METRICS, spec.train.epochs)
        study_uri = storage.study_uri(record.run_name)
        if resumed:
            client.update_run(record.parent_run_id, status=RUNNING)
            tuner = restore_tuner(spec, data, study_uri)
        else:
            tuner = build_tuner(spec, data, storage.uri, record.run_name, [tracker])
        print(f"study {record.run_name}: MLflow run {record.parent_run_id} in experiment "
              f"{record.experiment!r} at {tracking_uri}", flush=True)
        tuner.fit()
        saved = tune.ExperimentAnalysis(study_uri).trials  # statuses as saved, before Tune's cleanup
        unfinished = tracker.reconcile(saved) + spec.search.num_samples - len(saved)
        errors = sum(trial.status == Trial.ERROR for trial in saved)
        client.set_terminated(record.parent_run_id, KILLED if unfinished else FINISHED)
    finally:
        ray.shutdown()
    print_front(client, record.parent_run_id)
    if unfinished:
        print(f"\n{unfinished} trial(s) unfinished: continue with python -m study.launch {args.spec} "
              f"--storage {args.storage} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 1 if errors == spec.search.num_samples else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = resolve_spec(args)
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
