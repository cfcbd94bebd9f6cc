"""How a study is laid out in MLflow: the tags the launcher writes and the analysis reads."""

from __future__ import annotations

import argparse
import sys

import pandas as pd
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "robust_study.study"
TRIAL_TAG = "robust_study.trial_id"
METHOD_TAG = "robust_study.method"
BUDGET_TAG = "robust_study.budget"
ROBUST_METRIC_TAG = "robust_study.robust_metric"
FINAL_ROBUST_METRIC_TAG = "robust_study.final_robust_metric"  # the front's robust axis where trials have it
FAILURE_TAG = "robust_study.failure"
FAILURES_TAG = "robust_study.failures"
NODE_TAG = "robust_study.node_id"
ORPHAN_TAG = "robust_study.orphaned"
EVAL_WARNING_TAG = "robust_study.eval_warning"  # attack-failure indicators that fired, "; " between
TRAIN_WARNING_TAG = "robust_study.train_warning"  # the training loss stayed flat: the network does not learn
STAGE_TAG = "robust_study.stage"  # search or confirm
CONFIG_TAG = "robust_study.config_id"  # one configuration: its search trial and every seed confirming it
SEED_TAG = "robust_study.seed"  # the run's train.seed
CONFIRM_ROBUST_METRIC_TAG = "robust_study.confirm_robust_metric"  # the confirmed front's robust axis
ROUND_TAG = "robust_study.round"  # a racing confirm stage's round that trained the run (none: the first)
FINAL_EVAL_TAG = "robust_study.final_eval"  # a search run's strong evaluation: done, skipped: why, failed: why
FINAL_EVAL_DONE, FINAL_EVAL_SKIPPED = "done", "skipped"
SEARCHED_TAG = "robust_study.searched"  # the hyperparameters the search varied, "," between
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # what newer MLflow UIs pick the experiment's view by
NOTE_TAG = "mlflow.note.content"  # a run's description in the UI (markdown)
SEARCH, CONFIRM = "search", "confirm"
def find_study_run(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> str:
    """The study's parent run: `parent_run_id` if given, else the newest study run of `experiment`."""
    if parent_run_id is not None:
        return parent_run_id
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise LookupError(f"no MLflow experiment named {experiment!r}")
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`{STUDY_TAG}` != ''",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise LookupError(f"experiment {experiment!r} holds no study run")
    return runs[0].info.run_id


def study_parser(module: str, doc: str) -> argparse.ArgumentParser:
    """An analysis command's parser (`python -m MODULE`, described by its docstring's first line)
    with the options that name a study run, which `open_study` then opens."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--parent-run", help="the study run id (default: the newest study run)")
    return parser


def open_study(args: argparse.Namespace) -> tuple[MlflowClient, str]:
    """(client, parent run id) of the study that study_parser's options name; where there
    is none, the command exits with status 2 and one `error:` line."""
    client = MlflowClient(args.tracking_uri)
    try:
        return client, find_study_run(client, args.experiment, args.parent_run)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from err


TRIAL_COLUMNS = ["run_id", "trial_id", "stage", "config_id", "seed", "status", "method", "budget", "eval_warning",
                 "final_eval", "searched", "start_time", "end_time", "metrics.clean_acc", "metrics.robust_acc"]


def stage_of(run: Run) -> str:
    """A trial run's stage (runs recorded before stages existed were search runs)."""
    return run.data.tags.get(STAGE_TAG, SEARCH)


def child_runs(client: MlflowClient, parent_run_id: str, trial_id: str | None = None,
               stage: str | None = None) -> list[Run]:
    """The (active) trial runs of a study: all, one stage's, or the run of one trial."""
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    query = f"tags.`{PARENT_TAG}` = '{parent_run_id}'"
    if trial_id is not None:
        query += f" and tags.`{TRIAL_TAG}` = '{trial_id}'"
    runs = client.search_runs([experiment_id], filter_string=query, max_results=50000)
    return [run for run in runs if stage is None or stage_of(run) == stage]


def trial_runs(client: MlflowClient, parent_run_id: str) -> pd.DataFrame:
    """One row per trial run of the study: run_id, its trial, stage, configuration and seed,
    status, method, budget, hyperparameters (`params.*`), start and end (ms since the epoch) and
    the last value of each metric (`metrics.*`); the TRIAL_COLUMNS always."""
    rows = []
    for run in child_runs(client, parent_run_id):
        tags = run.data.tags
        row = {
            "run_id": run.info.run_id,
            "trial_id": tags.get(TRIAL_TAG, ""),
            "stage": stage_of(run),
            "config_id": tags.get(CONFIG_TAG, ""),
            "seed": int(tags[SEED_TAG]) if SEED_TAG in tags else None,
            "status": run.info.status,
            "method": tags.get(METHOD_TAG, ""),
            "budget": tags.get(BUDGET_TAG, ""),
            "eval_warning": tags.get(EVAL_WARNING_TAG, ""),
            "final_eval": tags.get(FINAL_EVAL_TAG, ""),
            "searched": tags.get(SEARCHED_TAG),
            "start_time": run.info.start_time,
            "end_time": run.info.end_time,
        }
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        rows.append(row)
    frame = pd.DataFrame(rows)
    return frame.reindex(columns=list(dict.fromkeys(TRIAL_COLUMNS + list(frame.columns))))
