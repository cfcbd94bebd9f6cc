"""A tiny study whose trials end with the strong evaluation: AutoAttack and minimum-norm radii
in MLflow, the front on the final robust axis, the radii's curves, and `study.evaluate --eval
strong` on a trained run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.records import FINAL_ROBUST_METRIC_TAG, PARENT_TAG, STUDY_TAG
from tests.helpers import tiny_spec, write_spec

EXAMPLES = 50


@pytest.mark.integration
def test_trials_end_with_autoattack_and_radii_and_the_front_uses_them(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        tiny_fashion_root, name="strong",
        eval={"examples": EXAMPLES, "items": [{"kind": "attack", "attack": "pgd_l2", "eps": [0.5, 1.0], "steps": 5}]},
        final_eval={"examples": EXAMPLES, "items": [
            {"kind": "autoattack", "norm": "l2", "eps": [0.5, 1.0], "version": "fast", "n_iter": 20},
            {"kind": "min_norm", "norm": "l2", "eps": [0.5, 1.0], "steps": 20},
        ]},
        scheduler={"kind": "fifo"}, search={"num_samples": 2, "max_concurrent": 2, "seed": 0},
    )
    storage = tmp_path / "runs"
    launched = subprocess.run([sys.executable, "-m", "study.launch", str(write_spec(tmp_path, spec)),
                               "--storage", str(storage)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("strong").experiment_id])
    parent = next(r for r in runs if STUDY_TAG in r.data.tags)
    assert parent.data.tags[FINAL_ROBUST_METRIC_TAG] == "autoattack_l2_eps0.5_acc"
    children = [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]
    assert len(children) == 2
    for child in children:
        metrics = child.data.metrics
        for eps in ("0.5", "1"):
            assert metrics[f"final_autoattack_l2_eps{eps}_acc"] <= metrics[f"pgd_l2_eps{eps}_acc"]
            assert f"final_autoattack_l2_eps{eps}_apgd_ce_broken" in metrics
        assert metrics["final_robust_acc"] == metrics["final_autoattack_l2_eps0.5_acc"]
        radii = pd.read_csv(client.download_artifacts(child.info.run_id, "eval/min_norm_l2.csv", str(tmp_path)))
        assert list(radii.columns[:4]) == ["example", "label", "correct", "radius"] and len(radii) == EXAMPLES
        from_radii = float((radii["correct"] & (radii["radius"] > 1.0)).mean())
        assert metrics["final_min_norm_l2_eps1_acc"] == pytest.approx(from_radii)
    printed = launched.stdout.split("Pareto front")[1]
    assert "autoattack_l2, eps = 0.5" in printed.splitlines()[0]
    assert "search_robust" in printed and "final_robust" in printed

    curves = subprocess.run([sys.executable, "-m", "analysis.curves", "--tracking-uri", uri, "--experiment", "strong",
                             "--min-norm", "l2", "--out", str(tmp_path / "curves")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert curves.returncode == 0, curves.stderr[-2000:]
    drawn = pd.read_csv(tmp_path / "curves" / "curves.csv")
    assert drawn.groupby("run_id")["accuracy"].apply(lambda a: a.is_monotonic_decreasing).all()

    trial = children[0].info.run_id
    evaluated = subprocess.run([sys.executable, "-m", "study.evaluate", "--tracking-uri", uri, "--run-id", trial,
                                "--eval", "strong", "--examples", "20"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "evaluate" in evaluated.stderr  # the progress bar
    logged = client.get_run(trial).data.metrics
    for name in ("final_autoattack_l2_eps1_square_broken", "final_autoattack_l2_eps1_fab_t_broken",
                 "final_min_norm_l2_median"):
        assert name in logged
    records = pd.read_parquet(client.download_artifacts(trial, "eval/examples.parquet", str(tmp_path / "after")))
    assert len(records) == EXAMPLES and records["index"].is_unique, "the 20 re-judged examples join the records"
    assert records["final_autoattack_l2_eps1_acc"].notna().all() and records["pgd_l2_eps1_acc"].notna().all()


@pytest.mark.parametrize(("final_eval", "message"), [
    ({"items": [{"kind": "autoattack", "norm": "l1", "eps": [1.0]}]},
     "error: final_eval.items[0].norm: 'l1' is not allowed"),
    ({"items": [{"kind": "min_norm", "attacks": ["pgd"], "eps": [1.0]}]},
     "error: final_eval.items[0].attacks[0]: unknown minimum-norm attack 'pgd'"),
    ({"items": [{"kind": "certificate_check"}]},
     "error: model.name: certified accuracy needs a Lipschitz-bounded model"),
])
def test_a_bad_strong_evaluation_exits_2_before_anything_starts(tiny_fashion_root: Path, tmp_path: Path,
                                                                 final_eval: dict, message: str) -> None:
    spec_path = write_spec(tmp_path, tiny_spec(tiny_fashion_root, name="bad", final_eval=final_eval))
    done = subprocess.run([sys.executable, "-m", "study.launch", str(spec_path), "--storage", str(tmp_path / "runs")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "runs").exists()
