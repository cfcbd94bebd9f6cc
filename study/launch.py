"""`python -m study.launch SPEC.yaml`: run a study and print its Pareto front.

Validates the spec before anything starts, loads the data once, runs the trials on a local Ray
(or the cluster at --address), records every trial in MLflow, and prints the front of the
trials that ran the full budget.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import ray
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

from analysis.pareto import front_table, robust_label, study_front
from study.space import describe_space
from study.spec import StudySpec, load_spec
from study.tracking import TrialTracker, start_study_run
from study.tuner import build_tuner
from trainables.core.data import load_data
from trainables.core.registry import ConfigError
from trainables.core.schema import to_dict


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.launch", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="study YAML, e.g. search_spaces/quickstart.yaml")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--address", help="Ray cluster to attach to (auto or HOST:PORT); default: a local Ray")
    parser.add_argument("--storage", type=Path, default=Path("runs"),
                        help="output folder: Tune results, checkpoints and the default MLflow database")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///STORAGE/mlflow.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set train.epochs=3 (repeatable)")
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


def run_study(spec: StudySpec, spec_file: Path, storage: Path, tracking_uri: str | None,
              address: str | None) -> str:
    """Run `spec` to the end; returns the MLflow parent run id."""
    storage = storage.expanduser().resolve()
    run_name = f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    study_dir = storage / run_name
    study_dir.mkdir(parents=True, exist_ok=False)
    resolved = study_dir / "spec.yaml"
    resolved.write_text(spec.to_yaml())
    tracking_uri = tracking_uri or f"sqlite:///{storage / 'mlflow.db'}"
    data = load_data(spec.data)
    client = MlflowClient(tracking_uri)
    local_store = not tracking_uri.startswith(("http", "databricks"))
    parent = start_study_run(
        client, spec.experiment,
        artifact_location=(storage / "mlartifacts").as_uri() if local_store else None,
        run_name=run_name,
        settings=to_dict(spec.settings()),
        robust_metric=spec.eval.primary_robust_metric,
        spec_file=resolved,
    )
    print(f"study {run_name}: MLflow run {parent} in experiment {spec.experiment!r} at {tracking_uri}", flush=True)
    ray.init(address=address, include_dashboard=False, log_to_driver=True)
    status = RunStatus.FAILED
    try:
        tracker = TrialTracker(tracking_uri, parent, spec.eval.metric_names() + ["robust_acc", "train_loss",
                               "lr", "epoch_time_s", "eval_time_s"], spec.train.epochs)
        tuner = build_tuner(spec, data, storage, run_name, [tracker])
        tuner.fit()
        status = RunStatus.FINISHED
    except KeyboardInterrupt:
        status = RunStatus.KILLED
        raise
    finally:
        client.set_terminated(parent, RunStatus.to_string(status))
        ray.shutdown()
    print_front(client, parent)
    return parent


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        spec = resolve_spec(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print("# resolved spec")
        print(spec.to_yaml())
        print("# search space")
        print(describe_space(spec.methods.methods))
        return 0
    try:
        run_study(spec, args.spec, args.storage, args.tracking_uri, args.address)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
