"""The front: non-dominated trials among those that ran the full budget, nothing else."""

from __future__ import annotations

import pandas as pd

from analysis.pareto import front_table, hyperparameters, pareto_front, robust_label, with_axes


def trials(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["run_id", "status", "method", "budget", "metrics.clean_acc",
                                       "metrics.robust_acc", "params.hp.epsilon"])


def test_front_keeps_only_full_budget_non_dominated_trials() -> None:
    df = trials([
        ("a", "FINISHED", "clean", "full", 0.90, 0.10, None),
        ("b", "FINISHED", "pgd_l2", "full", 0.80, 0.50, "1.5"),
        ("c", "FINISHED", "pgd_l2", "full", 0.70, 0.40, "2.0"),           # dominated by b
        ("d", "FINISHED", "pgd_l2", "stopped_early", 0.95, 0.90, "0.5"),  # ASHA-stopped: never on it
        ("e", "FAILED", "pgd_l2", "", 0.99, 0.99, "0.7"),                 # failed: never on it
        ("f", "FINISHED", "loss_gradl2", "full", 0.85, 0.30, None),
        ("g", "FINISHED", "clean", "full", 0.90, 0.10, None),             # tie with a: both kept
    ])
    front = pareto_front(with_axes(df))
    assert list(front["run_id"]) == ["b", "f", "a", "g"]
    table = front_table(front)
    assert list(table.columns) == ["method", "hyperparameters", "clean_acc", "search_robust", "warn", "run_id"]
    assert table.loc[0, "hyperparameters"] == "eps=1.5"


def test_the_final_strong_evaluation_is_the_robust_axis_and_shows_beside_the_search_metric() -> None:
    df = trials([
        ("a", "FINISHED", "gradient_penalty", "full", 0.80, 0.33, None),  # PGD overstates it
        ("b", "FINISHED", "pgd_l2", "full", 0.80, 0.30, "1.5"),
    ])
    df["metrics.final_clean_acc"] = [0.80, 0.80]
    df["metrics.final_robust_acc"] = [0.24, 0.247]
    df["eval_warning"] = ["pgd_l2 at eps 2: 0.330, over 2% above AutoAttack's 0.240", ""]
    front = pareto_front(with_axes(df))
    assert list(front["run_id"]) == ["b"]  # PGD alone would have put a on the front instead
    table = front_table(pareto_front(with_axes(df.iloc[:1])))
    assert list(table.columns) == ["method", "hyperparameters", "clean_acc", "search_robust", "final_robust",
                                   "warn", "run_id"]
    assert (table.loc[0, "search_robust"], table.loc[0, "final_robust"], table.loc[0, "warn"]) == (0.33, 0.24, "!")


def test_hyperparameters_show_what_was_searched_in_short_form() -> None:
    row = pd.Series({"params.hp.epsilon": "0.31043", "params.hp.step_size": "None", "params.hp.clip": "True",
                     "params.hp.steps": "5", "params.hp.model.gamma": "12.345", "params.resources.cpu": "1"})
    assert hyperparameters(row) == "clip=True, eps=0.31, gamma=12.3, steps=5", "recorded without `searched`: all"
    assert hyperparameters(pd.concat([row, pd.Series({"searched": "epsilon,model.gamma"})])) == "eps=0.31, gamma=12.3"


def test_empty_study_has_an_empty_front() -> None:
    assert pareto_front(trials([])).empty


def test_robust_axis_label_names_the_attack_and_eps() -> None:
    assert robust_label("pgd_l2_eps0.5_acc") == "pgd_l2, eps = 0.5"
    assert robust_label("robust_acc") == "robust_acc"
