"""The search's strong evaluation beside the search, only where it can change the front: the
cascade counts what the search's attack broke, a dominated trial is skipped and tagged, and
evaluating the skipped trial afterwards leaves the front as it was."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from analysis.pareto import pareto_front, with_axes
from analysis.records import FINAL_EVAL_TAG, SEARCH, find_study_run, trial_runs
from study.evaluate import main as evaluate_main
from tests.helpers import kill_session, launch_command, start_launch, study_runs, tiny_spec, wait_until, write_spec
from trainables.core.data import DataBundle, DatasetInfo
from trainables.core.evaluation import AttackEval, AutoAttackEval, EvalConfig, MinNormEval, run_evaluation
from trainables.records import known_radii

EXAMPLES = 100


def test_known_radii_come_from_the_examples_an_attack_broke() -> None:
    records = pd.DataFrame({"index": [4, 0, 2], "label": [0, 1, 2],
                            "clean_acc": pd.array([True, True, False], dtype="boolean"),
                            "pgd_l2_eps0.5_acc": pd.array([True, False, False], dtype="boolean"),
                            "pgd_l2_eps1_acc": pd.array([False, False, False], dtype="boolean")})
    radii = known_radii(records, EvalConfig(items=[AttackEval(attack="pgd_l2", eps=[0.5, 1.0])]), split_size=5)
    assert list(radii) == ["l2"]
    assert radii["l2"].tolist() == [0.5, math.inf, math.inf, math.inf, 1.0], "misclassified example 2: no radius"


def test_the_cascade_counts_known_breaks_and_does_not_attack_them() -> None:
    x = torch.randint(0, 256, (40, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(40) % 10
    info = DatasetInfo("toy", 10, (1, 28, 28), (0.5,), (0.5,))
    data = DataBundle(info, x[:0], y[:0], x[:0], y[:0], x, y)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.nn.functional.one_hot(torch.tensor(3), 10).float())  # always class 3: unbreakable
    config = EvalConfig(split="test", examples=None, items=[
        AutoAttackEval(norm="l2", eps=[0.5, 1.0], version="fast", n_iter=5),
        MinNormEval(norm="l2", eps=[0.5, 1.0], attacks=["ddn"], steps=5)])
    plain = run_evaluation(model, data, config)
    assert plain.metrics["autoattack_l2_eps1_acc"] == pytest.approx(0.1), "class 3's four examples stay correct"
    known = {"l2": torch.full((40,), math.inf, dtype=torch.float64)}
    known["l2"][3] = 0.75  # a verified example of an earlier attack, within 0.75
    inherited = run_evaluation(model, data, config, known=known)
    assert inherited.metrics["autoattack_l2_eps0.5_acc"] == pytest.approx(0.1)
    assert inherited.metrics["autoattack_l2_eps1_acc"] == pytest.approx(0.075), "one of four counted broken at 1.0"
    assert inherited.metrics["min_norm_l2_eps1_acc"] == pytest.approx(0.075)
    assert inherited.metrics["autoattack_l2_eps1_apgd_ce_broken"] == 0, "the known break is not attacked again"


def candidates_spec(data_root: Path, name: str, final_items: list[dict]) -> dict:
    """Three trials one at a time, the last a constant classifier, judged by `final_items`."""
    return tiny_spec(
        data_root, name=name,
        eval={"examples": EXAMPLES, "items": [{"kind": "attack", "attack": "pgd_l2", "eps": [0.5, 1.0], "steps": 5}]},
        final_eval={"examples": EXAMPLES, "items": final_items},
        methods={"pgd_l2": {"epsilon": {"low": 0.2, "high": 2.0, "log": True}, "steps": 2},
                 "loss_gradl2": {"lambda": {"low": 0.01, "high": 1.0, "log": True}},
                 "clean": {"weight_decay": 5.0}},
        scheduler={"kind": "fifo"},
        search={"num_samples": 3, "max_concurrent": 1, "seed": 0,  # one at a time: each waits for the one before
                "first": [{"method": "pgd_l2", "epsilon": 1.0}, {"method": "loss_gradl2", "lambda": 0.1},
                          {"method": "clean"}]},
    )


@pytest.mark.integration
def test_a_study_killed_in_its_final_evaluations_resumes_them_once(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = candidates_spec(tiny_fashion_root, "killed", [
        {"kind": "autoattack", "norm": "l2", "eps": [0.5, 1.0], "version": "fast", "n_iter": 20}])
    spec_path, storage = write_spec(tmp_path, spec), tmp_path / "runs"
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    log = tmp_path / "launch.log"

    def evaluated() -> int:
        return sum(r.data.tags.get(FINAL_EVAL_TAG) == "done" for r in study_runs(client, "killed")[1])

    driver = start_launch(spec_path, "--storage", str(storage), log=log)
    try:
        wait_until(lambda: evaluated() >= 1, 600, "a finished final evaluation", driver, log)
    finally:
        kill_session(driver.pid)
    before = {r.info.run_id: r.data.tags.get(FINAL_EVAL_TAG, "") for r in study_runs(client, "killed")[1]}
    assert "" in before.values(), "the kill came after every evaluation: nothing to resume"

    done = subprocess.run(launch_command(spec_path, "--storage", str(storage), "--resume"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    children = study_runs(client, "killed")[1]
    assert len(children) == 3 and {r.info.run_id for r in children} == set(before), "no run twice"
    for run_ in children:
        state = run_.data.tags[FINAL_EVAL_TAG]
        assert state == "done" or state.startswith("skipped: dominated by ")
        if before[run_.info.run_id] == "done":  # evaluated before the kill: not again
            assert len(client.get_metric_history(run_.info.run_id, "final_robust_acc")) == 1
        if state == "done":
            assert len(client.get_metric_history(run_.info.run_id, "final_robust_acc")) == 1
    assert "Pareto front" in done.stdout


@pytest.mark.integration
def test_a_dominated_trial_skips_the_strong_evaluation_and_the_front_stays_the_same(
        tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = candidates_spec(tiny_fashion_root, "candidates", [
        {"kind": "autoattack", "norm": "l2", "eps": [0.5, 1.0], "version": "fast", "n_iter": 10}])
    storage = tmp_path / "runs"
    launched = subprocess.run([sys.executable, "-m", "study.launch", str(write_spec(tmp_path, spec)),
                               "--storage", str(storage)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stdout[-3000:] + launched.stderr[-3000:]
    assert "final evaluation: autoattack beside the search, only where it can change the front" in launched.stdout
    uri = f"sqlite:///{storage / 'mlflow.db'}"
    client = MlflowClient(uri)
    parent = find_study_run(client, "candidates")
    runs = trial_runs(client, parent)
    runs = runs[runs["stage"] == SEARCH].set_index("method")
    skipped = runs.loc["clean"]
    assert skipped["final_eval"].startswith("skipped: dominated by ")
    winner = skipped["final_eval"].removeprefix("skipped: dominated by ")
    assert "metrics.final_robust_acc" not in runs or math.isnan(skipped["metrics.final_robust_acc"])
    done = runs.drop(index="clean")
    assert (done["final_eval"] == "done").all() and winner in set(done["run_id"])
    for eps in ("0.5", "1"):  # what PGD broke counts as broken: never above PGD on the same examples
        assert (done[f"metrics.final_autoattack_l2_eps{eps}_acc"] <= done[f"metrics.pgd_l2_eps{eps}_acc"]).all()
    assert (done["metrics.final_eval_time_s"] > 0).all()
    assert "final evaluation: 2 run" in launched.stdout and "1 skipped as dominated" in launched.stdout
    last_table = launched.stdout.split("Number of trials: 3/3")[-1].split("Total run time")[0]
    assert "| phase" in last_table and ("final eval" in last_table or "done" in last_table)
    costs = client.get_run(parent).data.metrics
    assert costs["strong_evals_run"] == 2 and costs["strong_evals_skipped"] == 1 and costs["strong_eval_task_s"] > 0
    phases = ["cost_startup_s", "cost_training_s", "cost_search_eval_s", "cost_strong_eval_s", "cost_report_s"]
    assert all(costs[name] >= 0 for name in phases) and costs["cost_training_s"] > 0
    assert costs["cost_total_s"] == pytest.approx(sum(costs[name] for name in phases), rel=1e-6)
    assert "where the time went (" in launched.stdout and "1 skipped as dominated" in launched.stdout.split(
        "where the time went")[1]
    front = set(pareto_front(with_axes(trial_runs(client, parent)))["run_id"])

    evaluated = subprocess.run([sys.executable, "-m", "study.evaluate", "--tracking-uri", uri,
                                "--run-id", skipped["run_id"], "--eval", "final"],
                               cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    every = trial_runs(client, parent).set_index("run_id")
    late = every.loc[skipped["run_id"]]
    assert late["final_eval"] == "done" and late["metrics.final_robust_acc"] <= skipped["metrics.pgd_l2_eps0.5_acc"]
    assert (every.loc[winner, "metrics.final_robust_acc"] >= late["metrics.final_robust_acc"]
            and every.loc[winner, "metrics.final_clean_acc"] >= late["metrics.final_clean_acc"])
    assert set(pareto_front(with_axes(every.reset_index()))["run_id"]) == front, \
        "evaluating the skipped trial changes nothing on the front"


def test_evaluate_final_without_a_final_eval_is_refused_in_one_line(
        tiny_fashion_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec_path = write_spec(tmp_path, tiny_spec(tiny_fashion_root, name="plain"))
    torch.save({}, tmp_path / "model.pt")
    code = evaluate_main(["--checkpoint", str(tmp_path / "model.pt"), "--spec", str(spec_path), "--eval", "final"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: --eval: final: the study's spec has no final_eval; allowed: strong, a YAML file")
