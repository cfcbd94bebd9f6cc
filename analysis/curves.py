"""Accuracy-vs-eps curves of a study's methods and the area under each, read from MLflow only.

`python -m analysis.curves --tracking-uri URI --experiment NAME --attack final_lrc_zeta4`
takes, per method, the finished full-budget search trial with the highest robust accuracy, reads its
`{attack}_eps{eps}_acc` metrics (last values) with the clean accuracy at eps = 0, writes
curves.csv and curves.png and logs them to the study run under `analysis/`.
`--min-norm l2` instead draws the whole curve from each trial's per-example minimum-norm radii
(its artifact `eval/min_norm_l2.csv`): accuracy(eps) = share of examples correct with radius > eps.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from analysis.pareto import best_per_method, study_trials  # noqa: E402
from analysis.plotting import finish  # noqa: E402
from analysis.records import SEARCH, open_study, study_parser  # noqa: E402


def accuracy_curves(runs: pd.DataFrame, attack: str) -> pd.DataFrame:
    """One row per (method, eps) with the accuracy, eps = 0 being the clean accuracy (the
    `final_clean_acc` for a `final_` attack)."""
    pattern = re.compile(rf"^metrics\.{re.escape(attack)}_eps([0-9.e+-]+)_acc$")
    clean = f"metrics.{'final_' if attack.startswith('final_') else ''}clean_acc"
    rows = []
    for _, run in runs.iterrows():
        points = [(float(m.group(1)), run[c]) for c in run.index if (m := pattern.match(c)) and pd.notna(run[c])]
        if points and pd.notna(run.get(clean)):
            rows += [{"method": run["method"], "run_id": run["run_id"], "eps": eps, "accuracy": acc}
                     for eps, acc in [(0.0, run[clean]), *sorted(points)]]
    return pd.DataFrame(rows, columns=["method", "run_id", "eps", "accuracy"])


def radius_curve(radii: pd.DataFrame, eps_grid: list[float]) -> list[float]:
    """Accuracy at each eps from per-example radii (0 for misclassified examples)."""
    radius = radii["radius"].to_numpy()
    return [float((radius > eps).mean()) for eps in eps_grid]


def min_norm_curves(client: MlflowClient, runs: pd.DataFrame, norm: str, points: int = 41) -> pd.DataFrame:
    """One row per (method, eps) on a grid from 0 to the largest finite radius of any trial."""
    tables = {}
    with tempfile.TemporaryDirectory() as folder:
        for _, run in runs.iterrows():
            try:
                path = client.download_artifacts(run["run_id"], f"eval/min_norm_{norm}.csv", folder)
            except Exception:  # noqa: BLE001  (MLflow raises several types for a missing artifact)
                continue
            tables[(run["method"], run["run_id"])] = pd.read_csv(path)
    finite = [t["radius"][np.isfinite(t["radius"])].max() for t in tables.values()]
    top = max([r for r in finite if pd.notna(r)], default=0.0)
    grid = list(np.linspace(0.0, top, points)) if top > 0 else [0.0]
    rows = [{"method": method, "run_id": run_id, "eps": eps, "accuracy": acc}
            for (method, run_id), table in tables.items()
            for eps, acc in zip(grid, radius_curve(table, grid), strict=True)]
    return pd.DataFrame(rows, columns=["method", "run_id", "eps", "accuracy"])


def curve_areas(curves: pd.DataFrame) -> pd.Series:
    """Per method, the area under its curve over the largest eps (its mean accuracy over the range)."""
    def area(group: pd.DataFrame) -> float:
        eps, acc = group["eps"].to_numpy(), group["accuracy"].to_numpy()
        return float(((eps[1:] - eps[:-1]) * (acc[1:] + acc[:-1]) / 2).sum() / eps[-1])

    return curves.groupby("method", sort=False)[["eps", "accuracy"]].apply(area).rename("area")


def plot_curves(curves: pd.DataFrame, areas: pd.Series, attack: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for method, group in curves.groupby("method", sort=False):
        ax.plot(group["eps"], group["accuracy"], marker="o" if len(group) < 20 else None,
                label=f"{method} (area {areas[method]:.3f})")
    ax.set_xlabel("eps")
    ax.set_ylabel("accuracy")
    ax.set_title(f"accuracy vs eps: {attack}")
    finish(fig, ax, path)


def main(argv: list[str] | None = None) -> int:
    parser = study_parser("analysis.curves", __doc__)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--attack", help="metric prefix, e.g. pgd_linf, final_fgsm, final_lrc_zeta4, targeted_pgd_l2")
    which.add_argument("--min-norm", choices=["l2", "linf"], help="draw the curve from the minimum-norm radii")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for curves.csv and curves.png")
    args = parser.parse_args(argv)
    client, parent = open_study(args)
    trials = study_trials(client, parent)
    best = best_per_method(trials[trials["stage"] == SEARCH])  # a confirmation seed is not a configuration
    if args.min_norm:
        curves, label = min_norm_curves(client, best, args.min_norm), f"min_norm_{args.min_norm}"
    else:
        curves, label = accuracy_curves(best, args.attack), args.attack
    if curves.empty:
        what = f"an eval/{label}.csv artifact" if args.min_norm else f"{args.attack}_eps*_acc metrics"
        print(f"error: --{'min-norm' if args.min_norm else 'attack'}: no finished trial has {what}", file=sys.stderr)
        return 2
    areas = curve_areas(curves)
    args.out.mkdir(parents=True, exist_ok=True)
    curves.to_csv(args.out / "curves.csv", index=False)
    plot_curves(curves, areas, label, args.out / "curves.png")
    for name in ("curves.csv", "curves.png"):
        client.log_artifact(parent, str(args.out / name), "analysis")
    print(curves.pivot_table(index="method", columns="eps", values="accuracy", sort=False).join(areas).to_string())
    print(f"wrote {args.out / 'curves.csv'} and {args.out / 'curves.png'}; logged to run {parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
