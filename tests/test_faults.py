"""Faults on one machine (real local Ray, Optuna, MLflow SQLite or a real tracking server): a NaN
trial fails alone; Ctrl-C and a SIGKILLed driver both resume with one MLflow run per trial and each
epoch once; a tracking server that goes away for 30 s costs nothing, and one that never comes back
ends the study with exit 3 and the command that re-logs everything once it answers."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from analysis.records import (
    BUDGET_TAG,
    FAILURE_TAG,
    FAILURES_TAG,
    FINAL_EVAL_DONE,
    FINAL_EVAL_SKIPPED,
    FINAL_EVAL_TAG,
    METHOD_TAG,
    ORPHAN_TAG,
)
from tests.helpers import (
    MlflowServer,
    epochs_logged,
    kill_session,
    launch_command,
    start_launch,
    study_runs,
    tiny_spec,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.integration


def test_a_nan_trial_is_retried_then_failed_without_stopping_the_study(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        tiny_fashion_root, name="nan",
        train={"optimizer": "sgd", "lr": 0.05},
        methods={"clean": {"weight_decay": 0.0}, "loss_gradl2": {"lambda": 1.0e30}},
        scheduler={"kind": "fifo"}, search={"num_samples": 4, "seed": 7}, faults={"max_failures": 1},
    )
    storage = tmp_path / "runs"
    done = subprocess.run(launch_command(write_spec(tmp_path, spec), "--storage", str(storage)),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    parents, children = study_runs(client, "nan")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 4
    by_method = {m: [r for r in children if r.data.tags[METHOD_TAG] == m] for m in ("clean", "loss_gradl2")}
    assert by_method["clean"] and by_method["loss_gradl2"], "the seeded sampler picks both methods"
    for run in by_method["loss_gradl2"]:
        assert run.info.status == "FAILED"
        assert "NonFiniteLoss" in run.data.tags[FAILURE_TAG] and "train_loss became" in run.data.tags[FAILURE_TAG]
        assert run.data.tags[FAILURES_TAG] == "2", "one retry (max_failures: 1), then failed"
    for run in by_method["clean"]:
        assert run.info.status == "FINISHED" and run.data.tags[BUDGET_TAG] == "full"
        assert epochs_logged(client, run) == [1, 2]
    assert f"{len(by_method['loss_gradl2'])} trial(s) failed" in done.stdout


def test_ctrl_c_then_sigkill_then_resume_records_everything_once(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        tiny_fashion_root, name="resume",
        data={"subset": 500, "val": 0},
        model={"name": "cw_cnn", "widths": [8, 8, 16, 16, 32, 32]},
        train={"epochs": 4},
        methods={"clean": {}, "pgd_l2": {"epsilon": {"low": 0.3, "high": 2.0}, "steps": 3}},
        scheduler={"kind": "fifo"}, search={"num_samples": 4, "max_concurrent": 2, "seed": 0},
    )
    spec_path = write_spec(tmp_path, spec)
    storage = tmp_path / "runs"
    log = tmp_path / "launch.log"
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")

    def total_epochs() -> int:
        return sum(len(epochs_logged(client, run)) for run in study_runs(client, "resume")[1])

    # Ctrl-C: Tune stops cleanly, the unfinished runs and the study are KILLED, exit 130
    driver = start_launch(spec_path, "--storage", str(storage), log=log)
    try:
        wait_until(lambda: total_epochs() >= 1, 300, "a first epoch", driver, log)
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        kill_session(driver.pid)
    parents, children = study_runs(client, "resume")
    assert parents[0].info.status == "KILLED"
    assert {r.info.status for r in children} <= {"KILLED", "FINISHED"} and "KILLED" in {r.info.status for r in children}

    # SIGKILL of the resumed driver and everything it started, mid-study
    before = total_epochs()
    driver = start_launch(spec_path, "--storage", str(storage), "--resume", log=log)
    try:
        wait_until(lambda: total_epochs() >= before + 2, 300, "progress after the first resume", driver, log)
    finally:
        kill_session(driver.pid)
    assert study_runs(client, "resume")[0][0].info.status == "RUNNING"

    done = subprocess.run(launch_command(spec_path, "--storage", str(storage), "--resume"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parents, children = study_runs(client, "resume")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4, "one MLflow run per trial, none duplicated by the restarts"
    experiment_id = client.get_experiment_by_name("resume").experiment_id
    for orphan in client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY):
        assert ORPHAN_TAG in orphan.data.tags and orphan.info.status == "KILLED", "only lost trials are retired"
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags[BUDGET_TAG] == "full"
        assert epochs_logged(client, run, "train_loss") == [1, 2, 3, 4], run.info.run_name
        for metric in ("clean_acc", "robust_acc"):  # FIFO: no rungs, so only the last epoch evaluates
            assert epochs_logged(client, run, metric) == [4], (run.info.run_name, metric)
    assert "Pareto front" in done.stdout


def outage_spec(tiny_fashion_root: Path, **sections: dict) -> dict:
    """A study whose trials train for most of a minute, reporting every epoch."""
    return tiny_spec(tiny_fashion_root, name="outage", data={"subset": 500, "val": 0},
                     model={"name": "cw_cnn", "widths": [8, 8, 16, 16, 32, 32]}, train={"epochs": 6},
                     methods={"clean": {}, "pgd_l2": {"epsilon": {"low": 0.3, "high": 2.0}, "steps": 3}},
                     scheduler={"kind": "fifo"}, search={"num_samples": 4, "max_concurrent": 2, "seed": 0}, **sections)


# several seconds for each trial, beside the search (the strong evaluation's writes go through the tracking writer)
STRONG_EVALUATION = {"examples": 100, "items": [{"kind": "autoattack", "norm": "l2", "eps": [1.0], "version": "fast",
                                                 "n_iter": 25}]}


def assert_recorded_once(client: MlflowClient, epochs: int) -> None:
    parents, children = study_runs(client, "outage")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4, "one run per trial"
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags[BUDGET_TAG] == "full", run.info.run_name
        assert epochs_logged(client, run, "train_loss") == list(range(1, epochs + 1)), run.info.run_name
        assert epochs_logged(client, run, "robust_acc") == [epochs], run.info.run_name


def stopped_after_an_epoch(tmp_path: Path, spec: dict, epoch: int = 1) -> tuple[MlflowServer, MlflowClient, Path,
                                                                                Path, subprocess.Popen]:
    """A real tracking server, a study launched against it, and the server stopped once a trial's
    epoch `epoch` is in MLflow."""
    server = MlflowServer(tmp_path)
    uri = server.start()
    spec_path, log, client = write_spec(tmp_path, spec), tmp_path / "launch.log", MlflowClient(uri)
    driver = start_launch(spec_path, "--storage", str(tmp_path / "runs"), "--tracking-uri", uri, log=log)
    try:
        wait_until(lambda: any(epoch in epochs_logged(client, r) for r in study_runs(client, "outage")[1]), 300,
                   f"a trial's epoch {epoch}", driver, log)
    except BaseException:
        kill_session(driver.pid)
        server.stop()
        raise
    server.stop()
    return server, client, spec_path, log, driver


def test_a_tracking_server_away_for_30_s_loses_nothing_and_never_holds_up_tune(tiny_fashion_root: Path,
                                                                               tmp_path: Path) -> None:
    """Stopped an epoch before the first trial ends: its last epoch, its strong evaluation (several
    seconds, queued at once although its run's last writes wait) and the other trials' epochs
    happen while the server is away."""
    spec = outage_spec(tiny_fashion_root, final_eval=STRONG_EVALUATION)
    server, client, spec_path, log, driver = stopped_after_an_epoch(tmp_path, spec, epoch=5)
    try:
        time.sleep(30)
        server.start()
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
        text = log.read_text()
        assert_recorded_once(client, 6)
        settled = [run.data.tags.get(FINAL_EVAL_TAG, "") for run in study_runs(client, "outage")[1]]
        assert all(t == FINAL_EVAL_DONE or t.startswith(FINAL_EVAL_SKIPPED) for t in settled), settled
        evaluated = [run for run in study_runs(client, "outage")[1] if run.data.tags[FINAL_EVAL_TAG] == FINAL_EVAL_DONE]
        assert evaluated and all("final_robust_acc" in run.data.metrics for run in evaluated)
    finally:
        kill_session(driver.pid)
        server.stop()
    assert len(re.findall(r"tracking: MLflow at \S+ does not answer", text)) == 1, text[-3000:]
    assert len(re.findall(r"tracking: MLflow at \S+ answers again after \d+ s", text)) == 1, text[-3000:]
    away = text.split("does not answer", 1)[1].split("answers again", 1)[0]
    assert re.search(r"\| (queued for )?final eval +\|", away), "the strong evaluations wait for nothing: " + away
    slow = [float(t) for t in re.findall(r"operation took ([\d.]+) s", text)]
    assert all(t <= 10 for t in slow), f"a Tune callback waited {max(slow)} s"


def test_a_tracking_server_that_never_comes_back_ends_in_exit_3_and_a_command_that_relogs_once(
        tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = outage_spec(tiny_fashion_root, tracking={"wait_s": 10})
    server, client, spec_path, log, driver = stopped_after_an_epoch(tmp_path, spec)
    uri = server.uri
    try:
        assert driver.wait(timeout=600) == 3, log.read_text()[-3000:]
    finally:
        kill_session(driver.pid)
    errors = [line for line in log.read_text().splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    last = errors[0]
    assert last.startswith(f"error: MLflow at {uri} has not taken the study's writes for 10 s"), last
    command = last.split("go on: ", 1)[1]
    assert command == f"python -m study.launch {spec_path} --storage {tmp_path / 'runs'} --resume"
    server.start()
    try:
        done = subprocess.run([*launch_command(spec_path), *shlex.split(command)[4:]], cwd=tmp_path,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert_recorded_once(client, 6)
    finally:
        server.stop()
