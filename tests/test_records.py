"""Per-example records: every evaluation keeps, per evaluated example, its index in the split,
its label and whether each accuracy counted it correct; the metrics are the records' means; the
examples are a seeded class-balanced order of the split whose first N + k extend its first N;
a trial's records are one Parquet file, and a later evaluation joins them, never replaces them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tests.test_train import settings
from trainables.core.data import load_data
from trainables.core.evaluation import (
    EXAMPLES,
    AttackEval,
    AutoAttackEval,
    CertifiedEval,
    EvalConfig,
    MinNormEval,
    NoiseEval,
    run_evaluation,
)
from trainables.core.evaluation.config import evaluation_order
from trainables.core.methods import build_method
from trainables.core.models import ModelConfig, build_model
from trainables.core.registry import ConfigError
from trainables.core.schema import parse
from trainables.core.train import fit
from trainables.records import merge_records, records_frame, write_tables
from trainables.trial import RECORDS_FILE


def test_the_order_is_class_balanced_seeded_and_a_function_of_the_labels() -> None:
    labels = torch.from_numpy(np.random.RandomState(0).choice(5, size=500, p=[0.4, 0.3, 0.1, 0.1, 0.1]))
    order = evaluation_order(labels, sample_seed=3)
    assert sorted(order.tolist()) == list(range(500)), "a permutation of the split"
    for n in (5, 20, 50):  # every class has >= 50 examples: the first 50 hold 10 of each
        counts = np.bincount(labels[order[:n]].numpy(), minlength=5)
        assert counts.max() - counts.min() <= 1, (n, counts)
    assert torch.equal(order, evaluation_order(labels.clone(), sample_seed=3))
    assert not torch.equal(order, evaluation_order(labels, sample_seed=4))
    rare = np.bincount(labels[order[:400]].numpy(), minlength=5)
    assert (rare[2:] == np.bincount(labels.numpy())[2:]).all(), "a class that runs out is all taken, the rest fill in"
    regression = torch.rand(30)
    assert sorted(evaluation_order(regression, 0).tolist()) == list(range(30))


@pytest.fixture(scope="module")
def trained(tiny_fashion_root: Path) -> tuple:
    config = settings(tiny_fashion_root, epochs=2)
    data = load_data(config.data)
    model = fit(config, build_method("clean", {"weight_decay": 0.0}), data)
    return model.eval(), data


def test_the_metrics_are_the_records_means(trained: tuple) -> None:
    model, data = trained
    config = EvalConfig(examples=60, batch_size=25, items=[
        AttackEval(eps=[0.5, 2.0], steps=5), NoiseEval(noise="uniform", eps=[0.3], k=2),
        AutoAttackEval(norm="l2", eps=[1.0], version="fast", n_iter=5),
        MinNormEval(norm="l2", eps=[0.5, 1.0], attacks=["ddn"], steps=20)])
    result = run_evaluation(model, data, config, seed=1)
    records = result.tables[EXAMPLES]
    expected_index = evaluation_order(data.test_y, 0)[:60]
    assert torch.equal(records["index"], expected_index.cpu())
    assert torch.equal(records["label"], data.test_y[expected_index].cpu())
    accuracies = ["clean_acc", *config.robust_accuracies()]
    assert set(accuracies) <= set(records)
    for name in accuracies:
        assert records[name].dtype == torch.bool and len(records[name]) == 60
        assert result.metrics[name] == pytest.approx(records[name].float().mean().item(), abs=1e-12), name
    radius = records["min_norm_l2_radius"]
    assert torch.equal(records["min_norm_l2_eps1_acc"], records["clean_acc"] & (radius > 1.0))
    assert result.metrics["robust_acc"] == result.metrics["pgd_l2_eps0.5_acc"]


def test_more_examples_extend_the_evaluated_set(trained: tuple) -> None:
    model, data = trained
    config = EvalConfig(examples=30, items=[AttackEval(eps=[1.0], steps=3)])
    small = run_evaluation(model, data, config).tables[EXAMPLES]
    config.examples = 80
    large = run_evaluation(model, data, config).tables[EXAMPLES]
    assert torch.equal(large["index"][:30], small["index"])
    assert torch.equal(large["clean_acc"][:30], small["clean_acc"]), "the same examples, the same clean verdicts"


def test_certified_radii_are_recorded(tiny_fashion_root: Path) -> None:
    data = load_data(settings(tiny_fashion_root).data)
    model = build_model(ModelConfig("kwl", {"layer": "aol", "gamma": 2.0}), data.info).eval()
    result = run_evaluation(model, data, EvalConfig(examples=40, items=[CertifiedEval(eps=[0.1, 0.5])]))
    records = result.tables[EXAMPLES]
    assert torch.equal(records["certified_eps0.5_acc"], records["certified_radius"] > 0.5)
    assert result.metrics["certified_eps0.1_acc"] == pytest.approx(records["certified_eps0.1_acc"].float().mean())


def test_fit_reports_the_records_of_evaluated_epochs_and_of_the_final_evaluation(tiny_fashion_root: Path,
                                                                               tmp_path: Path) -> None:
    config = settings(tiny_fashion_root, epochs=2)
    config.eval.every = 2
    config.final_eval = EvalConfig(examples=120, items=[AttackEval(attack="fgsm", eps=[0.1])])
    reported: list[dict] = []
    fit(config, build_method("clean", {}), load_data(config.data),
        on_epoch=lambda metrics, snapshot, tables: reported.append({"metrics": metrics, "tables": tables}))
    assert reported[0]["tables"] == {}, "no evaluation after epoch 1: no records"
    tables = reported[1]["tables"]
    write_tables(tables, tmp_path / "eval")
    records = pd.read_parquet(tmp_path / "eval" / RECORDS_FILE)
    assert len(records) == 120, "the final evaluation's 120 examples, the first 100 also the epoch's"
    assert records["clean_acc"].notna().sum() == 100 and records["final_clean_acc"].notna().all()
    metrics = reported[1]["metrics"]
    for name in ("clean_acc", "pgd_l2_eps0.5_acc", "final_clean_acc", "final_fgsm_eps0.1_acc"):
        assert metrics[name] == pytest.approx(records[name].dropna().astype(float).mean()), name
    assert records["index"].is_unique and list(records["index"][:100]) == tables[EXAMPLES]["index"].tolist()


def test_a_later_evaluation_joins_the_records_and_drops_none() -> None:
    kept = pd.DataFrame({"index": [4, 1, 7], "label": [0, 1, 0], "clean_acc": [True, False, True],
                         "final_autoattack_l2_eps1_acc": [True, False, False]})
    new = records_frame({"final_examples": {"index": torch.tensor([4, 1, 7, 9]), "label": torch.tensor([0, 1, 0, 1]),
                                            "clean_acc": torch.tensor([True, False, True, True]),
                                            "autoattack_l2_eps1_acc": torch.tensor([False, False, True, True])}})
    assert list(new.columns) == ["index", "label", "final_clean_acc", "final_autoattack_l2_eps1_acc"]
    merged = merge_records(kept, new)
    assert list(merged["index"]) == [4, 1, 7, 9]
    block = pd.DataFrame({"index": [9, 3], "label": [1, 0], "clean_acc": [True, True]})
    extended = merge_records(kept, block)
    assert list(extended["clean_acc"]) == [True, False, True, True, True], "a new block keeps the old rows' values"
    assert list(merged["final_autoattack_l2_eps1_acc"]) == [False, False, True, True], "the new evaluation's column"
    assert list(merged["clean_acc"].astype(object).fillna("na")) == [True, False, True, "na"]


def test_a_sample_seed_outside_the_seed_range_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"^eval.sample_seed: must be in 0 .. 2\^32 - 1, got -1$"):
        parse(EvalConfig, {"sample_seed": -1}, "eval")
    assert parse(EvalConfig, {"sample_seed": 7}, "eval").sample_seed == 7
