"""A real tiny study end to end: `python -m study.launch` with real Ray, Optuna and MLflow
(SQLite), then `python -m analysis.pareto` on what MLflow holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from analysis.records import BUDGET_TAG, METHOD_TAG, PARENT_TAG, ROBUST_METRIC_TAG, STUDY_TAG
from tests.helpers import tiny_spec, write_spec
from trainables.core.data import DatasetInfo
from trainables.core.models import ModelConfig, build_model

EPOCHS = 2


def brute_force_front(points: dict[str, tuple[float, float]]) -> set[str]:
    return {
        a for a, (x, y) in points.items()
        if not any(bx >= x and by >= y and (bx, by) != (x, y) for b, (bx, by) in points.items() if b != a)
    }


@pytest.mark.integration
def test_tiny_study_end_to_end(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec_path = write_spec(tmp_path, tiny_spec(tiny_fashion_root, search={"num_samples": 5}))
    storage = tmp_path / "runs"
    launched = subprocess.run(
        [sys.executable, "-m", "study.launch", str(spec_path), "--storage", str(storage), "--num-samples", "4"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    tracking_uri = f"sqlite:///{storage / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if STUDY_TAG in r.data.tags]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags[ROBUST_METRIC_TAG] == "pgd_l2_eps0.5_acc"
    assert parent.data.params["train.epochs"] == str(EPOCHS)
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["analysis", "spec.yaml"]

    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 4 and len(runs) == 5
    points = {}
    for child in children:
        method = child.data.tags[METHOD_TAG]
        assert child.info.status == "FINISHED" and child.data.params["method"] == method
        assert child.data.params["resources.cpu"] == "1.0"
        assert {k for k in child.data.params if not k.startswith(("method", "resources."))} == {
            "clean": {"hp.weight_decay"}, "pgd_l2": {"hp.epsilon", "hp.steps", "hp.step_size", "hp.clip", "hp.loss"},
            "loss_gradl2": {"hp.lambda"},
        }[method]
        for name in ("train_loss", "clean_acc", "robust_acc", "pgd_l2_eps0.5_acc", "pgd_l2_eps1_acc", "epoch_time_s"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, name)]
            assert steps == list(range(1, len(steps) + 1)), (name, steps)
        epochs_run = len(client.get_metric_history(child.info.run_id, "clean_acc"))
        assert child.data.tags[BUDGET_TAG] == ("full" if epochs_run == EPOCHS else "stopped_early")
        weights = torch.load(client.download_artifacts(child.info.run_id, "model/model.pt", str(tmp_path)),
                             weights_only=True)
        info = DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,))
        build_model(ModelConfig("mlp", {"hidden": [32]}), info).load_state_dict(weights)
        if epochs_run == EPOCHS:
            points[child.info.run_id] = (child.data.metrics["clean_acc"], child.data.metrics["robust_acc"])
    assert points, "ASHA lets at least one trial run the full budget"
    expected_front = brute_force_front(points)

    assert "Pareto front" in launched.stdout
    printed = launched.stdout.split("Pareto front")[1]
    assert f"({len(expected_front)} of 4 trials" in printed

    analysed = subprocess.run(
        [sys.executable, "-m", "analysis.pareto", "--tracking-uri", tracking_uri, "--experiment", "tiny",
         "--out", str(tmp_path / "analysis")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert analysed.returncode == 0, analysed.stderr[-3000:]
    front = pd.read_csv(tmp_path / "analysis" / "front.csv")
    assert set(front["run_id"]) == expected_front
    assert list(front["clean_acc"]) == sorted(front["clean_acc"])
    assert (tmp_path / "analysis" / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {a.path for a in client.list_artifacts(parent.info.run_id, "analysis")}
    assert {"analysis/front.csv", "analysis/front.png", "analysis/hypervolume.png", "analysis/report.html"} <= logged
