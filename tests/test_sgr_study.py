"""The SGR comparison inside one real tiny study: the family's methods (every SGR covariance
source is checked in test_sgr.py; here the PGD source, with its extra settings) train,
the final LRC / DeepFool evaluation is logged, the transfer matrix is computed from the study's
runs and logged to its parent run, and the evaluation command takes any evaluation items."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.curves import curve_areas
from analysis.curves import main as curves_main
from analysis.records import METHOD_TAG
from tests.helpers import run_local_study, study_runs, tiny_spec

pytestmark = pytest.mark.integration

METHODS = {
    "clean": {"weight_decay": 0.0},
    "weight_decay": {"method": "clean", "weight_decay": 5e-4},
    "fgsm_at": {"epsilon": 0.1},
    "gn": {"lambda": 0.1},
    "sgr_pgd": {"method": "sgr", "source": "pgd", "lambda": 0.1, "eps": 0.1, "steps": 2},
    "lrc_augment": {"zeta": 4.0, "epsilon": 2.0},
}


def test_the_sgr_family_trains_is_evaluated_and_transfers(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        tiny_fashion_root, name="sgr-family",
        data={"subset": 200, "val": 0},
        model={"name": "cw_cnn", "widths": [4, 4, 8, 8, 16, 16]},
        train={"epochs": 1, "optimizer": "adam", "lr": 3e-3},
        eval={"examples": 50, "items": [{"kind": "attack", "attack": "pgd_linf", "eps": [0.05, 0.1], "steps": 2}]},
        final_eval={"examples": 40, "items": [
            {"kind": "noise", "noise": "lrc", "zeta": [1.0, 8.0], "eps": [2.0], "k": 4},
            {"kind": "deepfool", "max_iter": 5}]},
        methods=METHODS, scheduler={"kind": "fifo"},
        search={"num_samples": len(METHODS), "first": [{"method": m} for m in METHODS]},
    )
    tracking_uri = run_local_study(tmp_path, spec, timeout=900)
    client = MlflowClient(tracking_uri)
    parents, children = study_runs(client, "sgr-family")
    runs = {r.data.tags[METHOD_TAG]: r for r in children}
    assert sorted(runs) == sorted(METHODS) and len(children) == len(METHODS)
    for label, run in runs.items():
        assert run.info.status == "FINISHED", (label, run.data.tags)
        assert run.data.params.get("registered_method") == METHODS[label].get("method"), label
        metrics = run.data.metrics
        assert 0 <= metrics["final_lrc_zeta1_eps2_acc"] <= metrics["final_clean_acc"]
        assert metrics["final_deepfool_rho"] > 0
        assert metrics["pgd_linf_auc"] >= metrics["pgd_linf_eps0.1_acc"]
    assert runs["sgr_pgd"].data.params["hp.source"] == "pgd"
    assert runs["weight_decay"].data.params["hp.weight_decay"] == "0.0005"

    out = tmp_path / "transfer"
    transferred = subprocess.run(
        [sys.executable, "-m", "study.transfer", "--tracking-uri", tracking_uri, "--experiment", "sgr-family",
         "--attack", "pgd_linf", "--eps", "0.1", "--steps", "3", "--examples", "60", "--out", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert transferred.returncode == 0, transferred.stderr[-3000:]
    matrix = pd.read_csv(out / "transfer.csv", index_col="model")
    assert len(matrix) == len(METHODS) and list(matrix.columns) == ["clean", *matrix.index]
    assert ((matrix >= 0) & (matrix <= 1)).all().all()
    for label in matrix.index:
        assert matrix.loc[label, label] <= matrix.loc[label, "clean"], "white-box examples only lower accuracy"
        assert label.split(" ")[0] in runs
    logged = {a.path for a in client.list_artifacts(parents[0].info.run_id, "transfer")}
    assert logged == {"transfer/transfer.csv", "transfer/transfer.png"}

    assert curves_main(["--tracking-uri", tracking_uri, "--experiment", "sgr-family", "--attack", "pgd_linf",
                        "--out", str(tmp_path / "curves")]) == 0
    curves = pd.read_csv(tmp_path / "curves" / "curves.csv")
    assert set(curves["method"]) == set(METHODS) and set(curves["eps"]) == {0.0, 0.05, 0.1}
    for method, group in curves.groupby("method"):
        area = curve_areas(group).iloc[0]
        assert area == pytest.approx(runs[method].data.metrics["pgd_linf_auc"]), "the trainer's area agrees"
    assert {a.path for a in client.list_artifacts(parents[0].info.run_id, "analysis")} >= {"analysis/curves.png"}

    for args, message in [(["--experiment", "nope"], "error: no MLflow experiment named 'nope'"),
                          (["--experiment", "sgr-family", "--attack", "cw"], "--attack.attack: unknown attack 'cw'")]:
        refused = subprocess.run([sys.executable, "-m", "study.transfer", "--tracking-uri", tracking_uri, *args],
                                 cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr[-2000:]

    eval_file = tmp_path / "eval.yaml"
    eval_file.write_text(yaml.safe_dump({"eval": {"items": [
        {"kind": "attack", "attack": "fgm", "eps": [0.5, 1.0]},
        {"kind": "attack", "attack": "pgd_l2", "eps": [1.0], "steps": 3, "targeted": True},
        {"kind": "noise", "noise": "uniform", "eps": [0.1], "k": 3}]}}))
    evaluated = subprocess.run(
        [sys.executable, "-m", "study.evaluate", "--tracking-uri", tracking_uri,
         "--run-id", runs["sgr_pgd"].info.run_id, "--eval", str(eval_file), "--examples", "60"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    metrics = client.get_run(runs["sgr_pgd"].info.run_id).data.metrics
    assert max(metrics["final_fgm_eps1_acc"], metrics["final_fgm_eps0.5_acc"]) <= metrics["final_clean_acc"]
    for name in ["final_fgm_auc", "final_targeted_pgd_l2_eps1_acc", "final_uniform_eps0.1_acc"]:
        assert 0 <= metrics[name] <= 1, name
