"""analysis.compare: confirmed configurations of several studies, from a real MLflow store."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from analysis import compare
from analysis.records import BUDGET_TAG, CONFIG_TAG, METHOD_TAG, PARENT_TAG, STAGE_TAG, STUDY_TAG

AA = "final_autoattack_l2_eps1_acc"
CERT = "final_certified_eps1_acc"


def record_study(client: MlflowClient, name: str, configs: dict[str, list[dict[str, float]]]) -> None:
    """A study run of experiment `name` with one finished confirm run per (configuration, seed)."""
    experiment = client.create_experiment(name)
    parent = client.create_run(experiment, tags={STUDY_TAG: name}).info.run_id
    for config, seeds in configs.items():
        for metrics in seeds:
            run = client.create_run(experiment, tags={PARENT_TAG: parent, STAGE_TAG: "confirm", CONFIG_TAG: config,
                                                      METHOD_TAG: config.split("-")[0], BUDGET_TAG: "full"})
            for key, value in {**metrics, "final_robust_acc": metrics.get(AA, metrics.get(CERT))}.items():
                client.log_metric(run.info.run_id, key, value)
            client.set_terminated(run.info.run_id)
    client.set_terminated(parent)


def seeds(clean: list[float], robust: list[float], extra: str = AA) -> list[dict[str, float]]:
    return [{"final_clean_acc": c, extra: r, "compute_time_s": 10.0} for c, r in zip(clean, robust, strict=True)]


@pytest.fixture
def store(tmp_path: Path) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    record_study(client, "attacked", {"pgd-a": seeds([0.80, 0.82, 0.84], [0.50, 0.52, 0.57]),
                                      "gn-b": seeds([0.90, 0.91, 0.92], [0.30, 0.31, 0.35])})
    record_study(client, "certified", {"sandwich-c": seeds([0.70, 0.72, 0.71], [0.20, 0.25, 0.21], CERT)})
    return uri


def test_each_configuration_gets_the_mean_and_student_t_interval_of_each_metric(store: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert compare.main(["--tracking-uri", store, "--experiments", "attacked", "certified", "--robust", AA,
                         "--certified", CERT, "--out", str(out)]) == 0
    summary = pd.read_csv(out / "summary.csv").set_index("config_id")
    robust = [0.50, 0.52, 0.57]
    half = stats.t.ppf(0.975, 2) * pd.Series(robust).std(ddof=1) / math.sqrt(3)
    assert summary.loc["pgd-a", AA] == pytest.approx(sum(robust) / 3)
    assert summary.loc["pgd-a", f"{AA}_half"] == pytest.approx(half)
    assert summary.loc["pgd-a", "study"] == "attacked" and summary.loc["pgd-a", "seeds"] == 3
    assert math.isnan(summary.loc["pgd-a", CERT]) and math.isnan(summary.loc["sandwich-c", AA])
    assert summary.loc["sandwich-c", CERT] == pytest.approx(0.22)
    assert summary.loc["gn-b", "compute_time_s"] == pytest.approx(10.0)
    table = (out / "summary.md").read_text()
    assert f"0.530 ± {half:.3f}" in table and "| certified | sandwich |" in table and "—" in table
    assert table.rstrip().endswith("paired verdicts: none, some confirm runs have no per-example records of "
                                   f"{AA} (recorded before records existed, or not measured)")
    assert (out / "front.png").stat().st_size > 0 and (out / "cost.png").stat().st_size > 0


def test_the_cross_front_keeps_configurations_no_others_means_dominate(store: str) -> None:
    summary = compare.compare_studies(MlflowClient(store), ["attacked", "certified"],
                                      [compare.CLEAN_METRIC, AA, CERT])
    front = compare.cross_front(summary, AA)
    assert list(front["config_id"]) == ["pgd-a", "gn-b"]  # sandwich has no AutoAttack number: not on it
    better = summary["config_id"] == "gn-b"  # now above pgd-a on both axes
    dominated = summary.assign(**{AA: summary[AA].where(~better, 0.6), compare.CLEAN_METRIC: 0.9})
    assert list(compare.cross_front(dominated, AA)["config_id"]) == ["gn-b"]


def test_an_unknown_experiment_is_one_error_line(store: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert compare.main(["--tracking-uri", store, "--experiments", "nope", "--robust", AA,
                         "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == "error: --experiments: no MLflow experiment named 'nope'"
    assert not (tmp_path / "x").exists()


def test_an_earlier_summary_joins_a_live_study_as_if_read_from_its_store(store: str, tmp_path: Path) -> None:
    both = tmp_path / "both"
    assert compare.main(["--tracking-uri", store, "--experiments", "attacked", "certified", "--robust", AA,
                         "--certified", CERT, "--out", str(both)]) == 0
    earlier = tmp_path / "earlier"
    assert compare.main(["--tracking-uri", store, "--experiments", "attacked", "--robust", AA,
                         "--out", str(earlier)]) == 0  # a table without the certified metric
    joined = tmp_path / "joined"
    assert compare.main(["--tracking-uri", store, "--experiments", "certified", "--summaries",
                         str(earlier / "summary.csv"), "--robust", AA, "--certified", CERT,
                         "--out", str(joined)]) == 0
    expected = pd.read_csv(both / "summary.csv").set_index("config_id").sort_index()
    got = pd.read_csv(joined / "summary.csv").set_index("config_id").sort_index()
    pd.testing.assert_frame_equal(got[expected.columns], expected)
    assert math.isnan(got.loc["pgd-a", CERT])


def test_a_file_that_is_not_a_summary_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("a,b\n1,2\n")
    assert compare.main(["--summaries", str(wrong), "--robust", AA, "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == (f"error: --summaries: {wrong} is not a summary.csv of this command: "
                                               "no column study, config_id, method, hyperparameters, seeds")
    assert not (tmp_path / "x").exists()
