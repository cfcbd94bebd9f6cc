"""MLflow bookkeeping on a real SQLite store: orphaned trial runs (started by a driver that
died before Tune saved them) are retired without losing them."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from analysis.records import ORPHAN_TAG, PARENT_TAG, TRIAL_TAG, trial_runs
from study.tracking import TrialTracker


def test_runs_of_trials_tune_no_longer_knows_are_retired_not_lost(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("orphans", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment).info.run_id
    runs = {t: client.create_run(experiment, tags={PARENT_TAG: parent, TRIAL_TAG: t}).info.run_id for t in ("a", "b")}
    client.log_metric(runs["b"], "train_loss", 1.5, step=1)

    TrialTracker(uri, parent, ["train_loss"], epochs=2, searched={}).retire_orphans({"a"})

    assert list(trial_runs(client, parent)["run_id"]) == [runs["a"]]
    assert client.get_run(runs["a"]).info.status == "RUNNING"
    orphan = client.get_run(runs["b"])
    assert orphan.info.lifecycle_stage == "deleted" and orphan.info.status == "KILLED"
    assert ORPHAN_TAG in orphan.data.tags
    assert [m.value for m in client.get_metric_history(runs["b"], "train_loss")] == [1.5], "its records are kept"
    deleted = client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY)
    assert [r.info.run_id for r in deleted] == [runs["b"]]
