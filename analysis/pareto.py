"""The Pareto front of clean vs robust accuracy of a study, read from MLflow only.

`python -m analysis.pareto --tracking-uri URI --experiment NAME` writes front.csv and front.png
(every trial coloured by method, the front as a step line) and logs the PNG to the study run.
The robust axis is a trial's final strong evaluation (`final_robust_acc`, e.g. AutoAttack) where
it has one, else the search's cheap metric (`robust_acc`, e.g. PGD); the clean axis follows it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from analysis.records import (  # noqa: E402
    FINAL_ROBUST_METRIC_TAG,
    ROBUST_METRIC_TAG,
    add_study_arguments,
    open_study,
    trial_runs,
)

CLEAN = "front.clean"
ROBUST = "front.robust"
SEARCH_ROBUST = "metrics.robust_acc"
FINAL_ROBUST = "metrics.final_robust_acc"


def column(frame: pd.DataFrame, name: str, default: object = float("nan")) -> pd.Series:
    """`frame[name]`, or `default` in every row where no run logged that metric or tag."""
    return frame[name] if name in frame else pd.Series(default, index=frame.index)


def with_axes(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with the front's axes: the final evaluation's clean and robust accuracy where a
    trial has them, else the per-epoch ones."""
    trials = trials.copy()
    final = column(trials, FINAL_ROBUST)
    has_final = final.notna()
    trials[CLEAN] = column(trials, "metrics.final_clean_acc").where(has_final, trials["metrics.clean_acc"])
    trials[ROBUST] = final.where(has_final, trials[SEARCH_ROBUST])
    return trials


def completed(trials: pd.DataFrame, x: str = CLEAN, y: str = ROBUST) -> pd.DataFrame:
    """The trials that finished the full budget and measured x and y."""
    return trials[(trials["budget"] == "full") & (trials["status"] == "FINISHED")].dropna(subset=[x, y])


def best_per_method(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method, the completed trial with the highest robust (then clean) accuracy."""
    if trials.empty:
        return trials
    return completed(trials).sort_values([ROBUST, CLEAN], ascending=False).groupby("method", sort=False).head(1)


def pareto_front(trials: pd.DataFrame, x: str = CLEAN, y: str = ROBUST) -> pd.DataFrame:
    """The trials that ran the full budget and that no other such trial beats on both x and y
    (maximized), sorted by x. ASHA-stopped, failed and unfinished trials are never on it."""
    if trials.empty:
        return trials
    done = completed(trials, x, y)
    keep = []
    for i, row in done.iterrows():
        others = done.drop(index=i)
        at_least = (others[x] >= row[x]) & (others[y] >= row[y])
        dominated = (at_least & ((others[x] > row[x]) | (others[y] > row[y]))).any()
        if not dominated:
            keep.append(i)
    return done.loc[keep].sort_values(x)


def hyperparameters(row: pd.Series) -> str:
    """`epsilon=0.7, steps=5` from the run's `params.hp.*` columns; a hyperparameter left to
    its rule (`step_size: None`, i.e. derived from epsilon) is not shown."""
    prefix = "params.hp."
    items = [(k[len(prefix):], v) for k, v in row.items() if k.startswith(prefix) and pd.notna(v) and v != "None"]
    return ", ".join(f"{k}={format_value(v)}" for k, v in sorted(items))


def format_value(value: str) -> str:
    try:
        return f"{float(value):.4g}" if value not in ("True", "False") else value
    except ValueError:
        return value


def front_table(front: pd.DataFrame) -> pd.DataFrame:
    """The front as the columns a reader wants: method, hyperparameters, clean accuracy, the
    search's robust accuracy (cheap, e.g. PGD) beside the final strong one (e.g. AutoAttack),
    and whether an attack-failure indicator fired (`!`: see the run's robust_study.eval_warning)."""
    table = pd.DataFrame({
        "method": front["method"],
        "hyperparameters": [hyperparameters(row) for _, row in front.iterrows()],
        "clean_acc": front[CLEAN],
        "search_robust": front[SEARCH_ROBUST],
        "final_robust": column(front, FINAL_ROBUST),
        "warn": ["!" if warning else "" for warning in column(front, "eval_warning", "")],
        "run_id": front["run_id"],
    }).reset_index(drop=True)
    return table.drop(columns="final_robust") if table["final_robust"].isna().all() else table


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, robust_metric: str, path: Path) -> None:
    """Every trial coloured by method (stopped-early ones hollow), the front as a step line
    through ringed points (so a front of one point, or of coinciding trials, still shows)."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    for method, group in trials.dropna(subset=[CLEAN, ROBUST]).groupby("method"):
        full = group["budget"] == "full"
        points = ax.scatter(group.loc[full, CLEAN], group.loc[full, ROBUST], label=method, s=36)
        ax.scatter(group.loc[~full, CLEAN], group.loc[~full, ROBUST], s=36,
                   facecolors="none", edgecolors=points.get_facecolor())
    if not front.empty:
        ax.step(front[CLEAN], front[ROBUST], where="pre", color="black", lw=1.2)
        ax.scatter(front[CLEAN], front[ROBUST], s=110, facecolors="none", edgecolors="black", lw=1.2,
                   label="Pareto front")
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"robust accuracy ({robust_label(robust_metric)})")
    ax.set_title("clean vs robust accuracy (hollow: stopped early)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def robust_label(metric: str) -> str:
    """`pgd_l2_eps0.5_acc` -> `pgd_l2, eps = 0.5`."""
    attack, sep, rest = metric.partition("_eps")
    return f"{attack}, eps = {rest.removesuffix('_acc')}" if sep else metric


def study_trials(client: MlflowClient, parent_run_id: str) -> pd.DataFrame:
    """The trial runs of a study with the front's axes (what every front-reading command takes)."""
    return with_axes(trial_runs(client, parent_run_id))


def study_front(client: MlflowClient, parent_run_id: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """(all trials, the front, the primary robust metric) of one study run."""
    trials = study_trials(client, parent_run_id)
    tags = client.get_run(parent_run_id).data.tags
    robust_metric = tags.get(FINAL_ROBUST_METRIC_TAG) or tags.get(ROBUST_METRIC_TAG, "robust_acc")
    return trials, pareto_front(trials), robust_metric


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.pareto", description=__doc__.splitlines()[0])
    add_study_arguments(parser)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for front.csv and front.png")
    args = parser.parse_args(argv)
    try:
        client, parent = open_study(args)
    except LookupError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    trials, front, robust_metric = study_front(client, parent)
    args.out.mkdir(parents=True, exist_ok=True)
    table = front_table(front)
    table.to_csv(args.out / "front.csv", index=False)
    plot_front(trials, front, robust_metric, args.out / "front.png")
    client.log_artifact(parent, str(args.out / "front.png"), "analysis")
    client.log_artifact(parent, str(args.out / "front.csv"), "analysis")
    print(f"{len(trials)} trials, {len(front)} on the front ({robust_label(robust_metric)}):")
    print(table.drop(columns="run_id").to_string(index=False))
    print(f"wrote {args.out / 'front.csv'} and {args.out / 'front.png'}; logged to run {parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
