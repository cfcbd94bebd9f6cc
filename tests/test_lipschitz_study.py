"""Every Lipschitz layer family trains an epoch inside one real tiny study, searching gamma;
certified accuracy is the objective and the ASHA metric, and the empirical Lipschitz estimate
is logged after training, never above the bound."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from analysis.records import METHOD_TAG
from tests.helpers import ROOT, epochs_logged, run_local_study, study_runs, tiny_spec

pytestmark = pytest.mark.integration

GAMMA = {"low": 1.0, "high": 10.0, "log": True}
METHODS = {
    "sandwich": {"method": "lipschitz", "model": {"layer": "sandwich", "gamma": GAMMA}},
    "orthogon": {"method": "lipschitz", "model": {"layer": "orthogon", "gamma": GAMMA}},
    "aol": {"method": "lipschitz", "model": {"layer": "aol", "gamma": GAMMA, "head": "lln"}},
    "sll": {"method": "lipschitz", "model": {"name": "sll_resnet", "size": "tiny", "gamma": GAMMA}},
    "plain": {"method": "lipschitz", "model": {"layer": "plain"}, "loss": "multimargin"},
}


def test_each_layer_family_trains_in_a_study_with_certified_accuracy(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = tiny_spec(
        tiny_fashion_root, name="lipschitz-families",
        data={"subset": 200, "val": 0},
        model={"name": "kwl", "size": "small"},
        train={"epochs": 2, "batch_size": 50, "optimizer": "adam", "lr": 0.01},
        eval={"examples": 50, "items": [{"kind": "certified", "eps": [0.1412, 0.2824]},
                                        {"kind": "attack", "attack": "pgd_l2", "eps": [0.1412], "steps": 3}],
              "robust_metric": "certified_eps0.1412_acc"},
        final_eval={"examples": 20, "items": [{"kind": "lipschitz_estimate", "restarts": 2, "steps": 10}]},
        methods=METHODS,
        objectives=[{"metric": "clean_acc", "mode": "max"}, {"metric": "certified_eps0.1412_acc", "mode": "max"}],
        scheduler={"kind": "asha", "metric": "certified_eps0.1412_acc", "grace_period": 2},
        search={"num_samples": len(METHODS), "first": [{"method": m} for m in METHODS]},
    )
    client = MlflowClient(run_local_study(tmp_path, spec, timeout=900))
    runs = {r.data.tags[METHOD_TAG]: r for r in study_runs(client, "lipschitz-families")[1]}
    assert sorted(runs) == sorted(METHODS)
    for label, run in runs.items():
        metrics, params = run.data.metrics, run.data.params
        assert run.info.status == "FINISHED" and epochs_logged(client, run) == [1, 2], label
        assert metrics["certified_eps0.2824_acc"] <= metrics["certified_eps0.1412_acc"] <= metrics["clean_acc"]
        assert metrics["certified_eps0.1412_acc"] <= metrics["pgd_l2_eps0.1412_acc"], "certified never beats attacked"
        if label != "plain":
            gamma = float(params["hp.model.gamma"])
            assert 1.0 <= gamma <= 10.0
            assert metrics["final_lipschitz_estimate"] <= gamma * (1 + 1e-4)
            assert 0 < metrics["final_lipschitz_ratio"] <= 1 + 1e-4
    assert runs["sll"].data.params["hp.model.name"] == "sll_resnet"
    assert runs["plain"].data.params["hp.loss"] == "multimargin"


def test_the_toy_fit_logs_a_figure_per_trial(tmp_path: Path) -> None:
    spec = yaml.safe_load((ROOT / "search_spaces" / "lipschitz_toy.yaml").read_text())
    spec["methods"] = {k: spec["methods"][k] for k in ("sandwich", "sll", "plain")}
    spec["search"] = {"num_samples": 3, "first": [{"method": m} for m in spec["methods"]]}
    spec["train"] = {"epochs": 3}
    client = MlflowClient(run_local_study(tmp_path, spec, timeout=600))
    runs = {r.data.tags[METHOD_TAG]: r for r in study_runs(client, "lipschitz_toy")[1]}
    assert sorted(runs) == ["plain", "sandwich", "sll"]
    for label, run in runs.items():
        assert [a.path for a in client.list_artifacts(run.info.run_id, "figures")] == ["figures/fit.png"], label
        metrics = run.data.metrics
        assert metrics["fit_mse"] >= 0 and metrics["certified_eps0.1_acc"] <= metrics["clean_acc"]


def test_a_lipconvnet_trains_with_each_head_in_a_study(tiny_fashion_root: Path, tmp_path: Path) -> None:
    variants = [("plain", "maxmin", "max"), ("lln", "hh1", "lip"), ("mlp", "maxmin", "lip")]
    heads = {f"soc_{head}": {"method": "lipschitz", "cr": 0.1, "offset": 0.0, "temperature": 1.0,
                             "model": {"head": head, "activation": activation, "pool": pool}}
             for head, activation, pool in variants}
    spec = tiny_spec(
        tiny_fashion_root, name="soc-heads",
        data={"subset": 100, "val": 0},
        model={"name": "lipconvnet", "depth": 5, "init_channels": 4, "hidden": 32, "fast": True},
        train={"epochs": 1, "batch_size": 50, "optimizer": "sgd", "lr": 0.05},
        eval={"examples": 40, "items": [{"kind": "certified", "eps": [0.1412]}]},
        methods=heads, scheduler={"kind": "fifo"},
        search={"num_samples": len(heads), "first": [{"method": m} for m in heads]},
    )
    client = MlflowClient(run_local_study(tmp_path, spec, timeout=600))
    runs = {r.data.tags[METHOD_TAG]: r for r in study_runs(client, "soc-heads")[1]}
    assert sorted(runs) == sorted(heads)
    for label, run in runs.items():
        assert run.info.status == "FINISHED", label
        assert run.data.params["hp.model.head"] == label.removeprefix("soc_")
        assert 0 <= run.data.metrics["certified_eps0.1412_acc"] <= run.data.metrics["clean_acc"]
