"""Helpers for tests that run real studies: specs on the tiny data set, the launcher as a
subprocess, and reading the study back from MLflow."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from analysis.records import PARENT_TAG, STUDY_TAG

ROOT = Path(__file__).resolve().parents[1]
RAY_CLI = str(Path(sys.executable).with_name("ray"))  # the CLI of this interpreter's Ray


def tiny_spec(data_root: Path, name: str = "tiny", **sections: dict) -> dict:
    """A study on the tiny Fashion-MNIST files that trains in seconds."""
    spec = {
        "name": name,
        "data": {"dataset": "fashion_mnist", "root": str(data_root), "subset": 300, "val": 100},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"epochs": 2, "batch_size": 50, "optimizer": "adam", "lr": 3e-3},
        "eval": {"examples": 100, "items": [{"kind": "attack", "attack": "pgd_l2", "eps": [0.5, 1.0], "steps": 3}]},
        "methods": {
            "clean": {},
            "pgd_l2": {"epsilon": {"low": 0.2, "high": 2.0, "log": True}, "steps": 2},
            "loss_gradl2": {"lambda": {"low": 0.01, "high": 1.0, "log": True}},
        },
        "scheduler": {"kind": "asha", "metric": "robust_acc", "grace_period": 1, "reduction_factor": 2},
        "search": {"num_samples": 4, "max_concurrent": 2, "seed": 1},
        "resources": {"cpu": 1, "gpu": 0},
    }
    for key, value in sections.items():
        merge = isinstance(value, dict) and key not in ("model", "methods")
        spec[key] = {**spec.get(key, {}), **value} if merge else value
    return spec


def write_spec(folder: Path, spec: dict) -> Path:
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def launch_command(spec_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "study.launch", str(spec_path), *args]


def run_local_study(folder: Path, spec: dict, timeout: int = 900) -> str:
    """Run `spec` to the end on a local Ray with its storage under `folder`, asserting that it
    succeeded; returns the study's MLflow tracking URI."""
    storage = folder / "runs"
    done = subprocess.run(launch_command(write_spec(folder, spec), "--storage", str(storage)),
                          cwd=folder, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return f"sqlite:///{storage / 'mlflow.db'}"


def start_launch(spec_path: Path, *args: str, log: Path) -> subprocess.Popen:
    """The launcher in its own process session, so the test can kill it and all it started."""
    with open(log, "ab") as out:
        return subprocess.Popen(launch_command(spec_path, *args), cwd=spec_path.parent,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def kill_session(session_id: int) -> None:
    """SIGKILL every process of a process session (a driver and the local Ray it started)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session_id:
            try:
                os.kill(int(stat.parent.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def wait_until(condition: Callable[[], bool], timeout: float, what: str,
               driver: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `condition`; fail at once if `driver` exits first, showing the end of its `log`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if driver is not None and driver.poll() is not None:
            tail = log.read_text()[-3000:] if log is not None else ""
            raise AssertionError(f"the launcher exited ({driver.returncode}) before {what}:\n{tail}")
        time.sleep(0.5)
    raise TimeoutError(f"waited {timeout}s for {what}")


def study_runs(client: MlflowClient, experiment: str) -> tuple[list[Run], list[Run]]:
    """(parent runs, child runs) of an experiment; ([], []) while it does not exist."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return [], []
    runs = client.search_runs([found.experiment_id], max_results=1000)
    parents = [r for r in runs if STUDY_TAG in r.data.tags]
    return parents, [r for r in runs if PARENT_TAG in r.data.tags]


def epochs_logged(client: MlflowClient, run: Run, metric: str = "train_loss") -> list[int]:
    return [m.step for m in client.get_metric_history(run.info.run_id, metric)]


def reported_results(storage: Path) -> dict[str, list[dict]]:
    """Per trial id, every result Tune received from it, in order, across all its attempts (the
    result.json files in the study folders under `storage`)."""
    results: dict[str, list[dict]] = {}
    for path in sorted(storage.glob("*/*/result.json")):
        for line in path.read_text().splitlines():
            result = json.loads(line)
            results.setdefault(result["trial_id"], []).append(result)
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend (and `app`, e.g. MLflow's
    `basic-auth`, whose admin is made admin / s3cret-Tr4cking-pw), a tracking server only (no
    GenAI job runner, as the README's recipe). `stop()` and `start()` again keep its port and
    store: an outage of the same server."""

    def __init__(self, folder: Path, app: str | None = None) -> None:
        self.folder, self.app, self.port = folder, app, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> str:
        with open(self.folder / "mlflow-server.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                 f"sqlite:///{self.folder / 'mlflow.db'}", "--artifacts-destination", str(self.folder / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                 *(["--app-name", self.app] if self.app else [])],
                cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_FLASK_SERVER_SECRET_KEY": "robust-study-tests",
                     "MLFLOW_AUTH_ADMIN_PASSWORD": "s3cret-Tr4cking-pw",
                     "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # its GenAI job runner slows every request
            )
        wait_until(self.healthy, 90, "the MLflow server", self.process, self.folder / "mlflow-server.log")
        return self.uri

    def healthy(self) -> bool:
        try:
            return urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200
        except urllib.error.HTTPError as error:
            return error.code == 401  # up, and asking for credentials
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            kill_session(self.process.pid)
        self.process = None


@contextlib.contextmanager
def mlflow_server(folder: Path, app: str | None = None) -> Iterator[str]:
    """A running MlflowServer for the block; yields its URI, then stops it."""
    server = MlflowServer(folder, app)
    try:
        yield server.start()
    finally:
        server.stop()
