"""Hypervolume of clean-vs-robust fronts: the area of the (clean, robust) square above the
reference point (0, 0) that a set of points dominates, one number for a whole front (larger is
better), and its growth over a study's finished trials. Optuna's exact implementation computes it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna._hypervolume import compute_hypervolume  # noqa: E402

REFERENCE = (0.0, 0.0)


def hypervolume(points: np.ndarray | list) -> float:
    """The area that `points` (rows of maximized (clean, robust) accuracies) dominate above
    REFERENCE; dominated points add nothing, no point gives 0."""
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(points) == 0:
        return 0.0
    # Optuna minimizes: negate the accuracies and the reference alike
    clipped = np.maximum(points, REFERENCE)
    return float(compute_hypervolume(-clipped, -np.asarray(REFERENCE)))


def hypervolume_progress(finished: pd.DataFrame, x: str, y: str, started_ms: float) -> pd.DataFrame:
    """After each finished trial (in order of `end_time`): how many have finished, the minutes
    since `started_ms`, and the hypervolume of the full-budget points among them (rows whose x
    or y is missing count as trials but add no point)."""
    ordered = finished.sort_values("end_time")
    rows, points = [], []
    for count, (_, trial) in enumerate(ordered.iterrows(), start=1):
        if pd.notna(trial[x]) and pd.notna(trial[y]) and trial["budget"] == "full":
            points.append((trial[x], trial[y]))
        rows.append({"trials": count, "minutes": (trial["end_time"] - started_ms) / 60000,
                     "hypervolume": hypervolume(points)})
    return pd.DataFrame(rows, columns=["trials", "minutes", "hypervolume"])


def plot_hypervolume(progress: pd.DataFrame, confirmed: float | None, path: Path) -> None:
    """The search front's hypervolume against finished trials and against wall time, with the
    confirmed front's (of its means) as a dashed line where a confirm stage ran."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for ax, x, label in zip(axes, ("trials", "minutes"), ("finished search trials", "wall time (minutes)"),
                            strict=True):
        ax.step(progress[x], progress["hypervolume"], where="post", marker="o", ms=3, label="search front")
        if confirmed is not None:
            ax.axhline(confirmed, color="black", ls="--", lw=1, label="confirmed front (means)")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_ylabel("hypervolume, reference (0, 0)")
    axes[0].legend(fontsize=8)
    fig.suptitle("hypervolume of the clean-vs-robust front")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
