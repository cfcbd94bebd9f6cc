"""Every kernel_reg method (and SN-constraint combinations) trains an epoch inside one real
tiny study, and the reference's final evaluation runs on a trained run and logs back to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from analysis.records import METHOD_TAG
from tests.helpers import epochs_logged, run_local_study, study_runs, tiny_spec

pytestmark = pytest.mark.integration

METHODS = {
    "clean": {},
    "pgd_l2": {"epsilon": 0.5, "steps": 2},
    "pgd_linf": {"epsilon": 0.03, "steps": 2},
    "loss_gradl2": {"lambda": 0.1},
    "loss_gradl1": {"lambda": 0.1},
    "gradient_penalty": {"lambda": 0.1},
    "adv_perturbation_penalty": {"epsilon": 0.3, "steps": 2},
    "clean+sn_projection": {"weight_decay": 0.0, "tau": 0.2, "kappa": 2.0},
    "pgd_l2+sn_projection": {"epsilon": 0.5, "steps": 2, "tau": 0.5, "sn_mode": "operator"},
    "clean+sn_penalty": {"weight_decay": 0.0, "lambda_sn": 0.01, "sn_mode": "operator"},
}


def test_each_method_trains_an_epoch_and_is_evaluated(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        tiny_fashion_root, name="kernel-reg",
        data={"subset": 200, "val": 0},
        model={"name": "cw_cnn", "widths": [4, 4, 8, 8, 16, 16]},
        train={"epochs": 1, "optimizer": "sgd", "lr": 0.05},
        eval={"examples": 50, "items": [{"kind": "attack", "attack": "pgd_l2", "eps": [0.5], "steps": 2}]},
        methods=METHODS, scheduler={"kind": "fifo"},
        search={"num_samples": len(METHODS), "first": [{"method": m} for m in METHODS]},
    )
    tracking_uri = run_local_study(tmp_path, spec, timeout=900)
    client = MlflowClient(tracking_uri)
    children = study_runs(client, "kernel-reg")[1]
    runs = {r.data.tags[METHOD_TAG]: r for r in children}
    assert sorted(runs) == sorted(METHODS) and len(children) == len(METHODS), "search.first ran each method once"
    for name, run in runs.items():
        assert run.info.status == "FINISHED", (name, run.data.tags)
        assert epochs_logged(client, run) == [1]
        assert torch.isfinite(torch.tensor(run.data.metrics["train_loss"]))

    projected = runs["clean+sn_projection"]
    weights = torch.load(client.download_artifacts(projected.info.run_id, "model/model.pt", str(tmp_path)),
                         weights_only=True)
    radius = 0.2 * 5  # tau (1 + 4 exp(0)) in the first epoch
    for name, tensor in weights.items():
        if name.endswith("weight"):
            assert float(torch.linalg.matrix_norm(tensor.reshape(tensor.shape[0], -1), ord=2)) <= radius + 1e-4

    evaluated = subprocess.run(
        [sys.executable, "-m", "study.evaluate", "--tracking-uri", tracking_uri,
         "--run-id", runs["pgd_l2"].info.run_id, "--examples", "60", "--steps", "5"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = client.get_run(runs["pgd_l2"].info.run_id).data.metrics
    l2 = [metrics[f"final_pgd_l2_eps{eps}_acc"] for eps in ("0.1", "0.5", "1", "1.5")]
    linf = [metrics[f"final_pgd_linf_eps{eps}_acc"] for eps in ("0.003922", "0.007843", "0.01961", "0.03137")]
    assert metrics["final_clean_acc"] >= l2[0] and l2 == sorted(l2, reverse=True) and linf == sorted(linf, reverse=True)
    assert "final_clean_acc" in evaluated.stdout
