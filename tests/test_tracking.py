"""MLflow bookkeeping on a real SQLite store: orphaned trial runs (started by a driver that
died before Tune saved them) are retired without losing them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import mlflow
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from analysis.records import ORPHAN_TAG, PARENT_TAG, TRIAL_TAG, trial_runs
from study.tracking import TrialTracker, seed_sqlite_store


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


def schema(path: Path) -> tuple[set[tuple[str, ...]], list[tuple]]:
    """A store's tables, indexes and schema version; each statement's lines sorted (MLflow's own
    migrations write a table's constraints in no fixed order)."""
    with sqlite3.connect(path) as db:
        statements = {tuple(sorted(line.strip().rstrip(",") for line in row[0].splitlines()))
                      for row in db.execute("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")}
        return statements, db.execute("SELECT * FROM alembic_version").fetchall()


def test_a_new_sqlite_store_is_a_copy_of_mlflows_own_made_once_per_version(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    own, seeded, second = (tmp_path / name / "mlflow.db" for name in ("own", "seeded", "second"))
    own.parent.mkdir()
    own_client = MlflowClient(f"sqlite:///{own}")
    own_client.search_experiments()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # the default experiment's folder is the working folder's
    seed_sqlite_store(f"sqlite:///{seeded}")
    monkeypatch.chdir(tmp_path)
    template = tmp_path / "cache" / "robust-study" / f"mlflow-{mlflow.__version__}.db"
    made = template.stat().st_mtime_ns
    assert schema(seeded) == schema(own)
    client = MlflowClient(f"sqlite:///{seeded}")
    default, own_default = client.get_experiment("0"), own_client.get_experiment("0")
    assert (default.name, default.artifact_location) == (own_default.name, own_default.artifact_location)
    experiment = client.create_experiment("study", artifact_location=(tmp_path / "art").as_uri())
    assert experiment == own_client.create_experiment("study", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(experiment)
    client.log_metric(run.info.run_id, "robust_acc", 0.5, step=1)
    assert client.get_metric_history(run.info.run_id, "robust_acc")[0].value == 0.5

    seed_sqlite_store(f"sqlite:///{second}")  # the template is reused, not made again
    assert template.stat().st_mtime_ns == made and schema(second) == schema(own)
    before = seeded.read_bytes()
    seed_sqlite_store(f"sqlite:///{seeded}")  # an existing store is left alone
    assert seeded.read_bytes() == before
    assert [p.name for p in tmp_path.glob("*/.mlflow.db.*")] == []  # no copy left half-way

    monkeypatch.setenv("XDG_CACHE_HOME", str(own))  # a cache that cannot be made: MLflow creates the store
    seed_sqlite_store(f"sqlite:///{tmp_path / 'third' / 'mlflow.db'}")
    assert not (tmp_path / "third" / "mlflow.db").exists()
