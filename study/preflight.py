"""The launcher's checks of the places a study writes to, made before Ray starts and before any
file or folder is left: the storage folder can be created, the study to resume exists (by its
exact name), and the MLflow experiment of the study's name is not a deleted one. Light imports
only (the standard library): a refused launch costs a fraction of a second."""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from trainables.core.registry import ConfigError

RUN_FOLDER = re.compile(r"(.+)-(\d{8}-\d{6})")  # a study run's folder: NAME-YYYYmmdd-HHMMSS
RECORD_FILE = "study.json"


def is_study_folder(folder_name: str, name: str) -> bool:
    """Whether `folder_name` is a run folder of the study named exactly `name`."""
    match = RUN_FOLDER.fullmatch(folder_name)
    return match is not None and match.group(1) == name


def check_storage_folder(folder: Path) -> None:
    """Refuse a local --storage folder that cannot be created: the missing part of the path is
    created and removed again, so what the operating system refuses (/proc, a read-only mount)
    is named now."""
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--storage: cannot create {folder} ({err.strerror or err}); "
                          "allowed: a folder you can create and write to") from err
    finally:
        for created in missing:  # deepest first
            if created.is_dir():
                created.rmdir()


def latest_local_study(folder: Path, name: str) -> tuple[str, dict]:
    """The newest run folder of study `name` under a local --storage that has a record, and its
    record, or a one-line refusal of --resume."""
    runs = sorted(p.name for p in folder.iterdir() if p.is_dir() and is_study_folder(p.name, name)
                  and (p / RECORD_FILE).is_file()) if folder.is_dir() else []
    if not runs:
        raise ConfigError(f"--resume: no study named {name!r} under {folder} to resume")
    return runs[-1], json.loads((folder / runs[-1] / RECORD_FILE).read_text())


def deleted_experiment(experiment: str, experiment_id: str) -> ConfigError:
    """The refusal of a study whose MLflow experiment exists but is deleted (MLflow would refuse
    each of its runs with a traceback)."""
    return ConfigError(f"tracking.experiment: {experiment!r} exists in MLflow but is deleted; restore it "
                       f"(mlflow experiments restore --experiment-id {experiment_id}) or name another")


def check_experiment(tracking_uri: str, experiment: str) -> None:
    """Refuse an experiment of the study's name that is deleted, read straight from a SQLite store
    or a tracking server's REST API (no MLflow import). Other stores are checked when MLflow opens."""
    parsed = urllib.parse.urlsplit(tracking_uri)
    if parsed.scheme == "sqlite":
        stage = sqlite_stage(Path(tracking_uri.removeprefix("sqlite:///")), experiment)  # 4 slashes: absolute
    elif parsed.scheme in ("http", "https"):
        stage = server_stage(tracking_uri, experiment)
    else:
        return
    if stage is not None and stage[1] == "deleted":
        raise deleted_experiment(experiment, stage[0])


def sqlite_stage(database: Path, experiment: str) -> tuple[str, str] | None:
    """(id, lifecycle stage) of `experiment` in an MLflow SQLite store, None where it has none."""
    if not database.is_file():
        return None
    try:
        with sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT experiment_id, lifecycle_stage FROM experiments WHERE name = ?",
                                     (experiment,)).fetchone()
    except sqlite3.Error:  # not (yet) an MLflow store: MLflow creates or refuses it when it opens
        return None
    return (str(row[0]), row[1]) if row else None


def server_stage(tracking_uri: str, experiment: str) -> tuple[str, str] | None:
    """(id, lifecycle stage) of `experiment` on a tracking server, None where it has none or does
    not say (MLflow's own client meets any other trouble when it opens the store)."""
    query = urllib.parse.urlencode({"experiment_name": experiment})
    request = urllib.request.Request(f"{tracking_uri.rstrip('/')}/api/2.0/mlflow/experiments/get-by-name?{query}")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user is not None:
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        request.add_header("Authorization", f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            found = json.loads(response.read()).get("experiment", {})
    except (urllib.error.URLError, TimeoutError, ValueError):
        return None
    return (str(found.get("experiment_id")), found.get("lifecycle_stage")) if found else None
