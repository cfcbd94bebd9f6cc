"""The Pareto fronts of clean vs robust accuracy of a study, read from MLflow only.

The search front: the search trials that ran the full budget and that no other beats on both
axes. The confirmed front (after a confirm stage): per configuration, the mean and a 95%
Student-t interval over its seeds; on the front when no other configuration's means dominate.
The robust axis is a trial's final strong evaluation (`final_robust_acc`, e.g. AutoAttack) where
it has one, else the search's cheap metric (`robust_acc`, e.g. PGD); the clean axis follows it.

`python -m analysis.pareto --tracking-uri URI --experiment NAME` writes front.csv and front.png
(every trial coloured by method, the front as a step line; with a confirm stage, the confirmed
configurations with error bars over the faint search), confirmed_front.csv / .png and
hypervolume.png, and logs them to the study run under `analysis/`.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from scipy import stats  # noqa: E402

from analysis.hypervolume import hypervolume, hypervolume_progress, plot_hypervolume  # noqa: E402
from analysis.names import short_name, short_value  # noqa: E402
from analysis.plotting import finish  # noqa: E402
from analysis.records import (  # noqa: E402
    CONFIRM,
    CONFIRM_ROBUST_METRIC_TAG,
    FINAL_ROBUST_METRIC_TAG,
    ROBUST_METRIC_TAG,
    SEARCH,
    open_study,
    study_parser,
    trial_runs,
)
from analysis.verdicts import Verdicts, paired_verdicts  # noqa: E402

CLEAN = "front.clean"
ROBUST = "front.robust"
SEARCH_ROBUST = "metrics.robust_acc"
FINAL_ROBUST = "metrics.final_robust_acc"
CONFIDENCE = 0.95  # of the confirmed front's intervals


def column(frame: pd.DataFrame, name: str, default: object = float("nan")) -> pd.Series:
    """`frame[name]`, or `default` in every row where no run logged that metric or tag."""
    return frame[name] if name in frame else pd.Series(default, index=frame.index)


def with_axes(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with the front's axes: the final evaluation's clean and robust accuracy where a
    trial has them, else the per-epoch ones; none (nan) where its final evaluation was skipped,
    failed or is still owed (study.final_eval), so a front never mixes the two."""
    trials = trials.copy()
    final = column(trials, FINAL_ROBUST)
    has_final = final.notna()
    owed = ~has_final & (column(trials, "final_eval", "").fillna("") != "")
    trials[CLEAN] = column(trials, "metrics.final_clean_acc").where(has_final, trials["metrics.clean_acc"])
    trials[ROBUST] = final.where(has_final, trials[SEARCH_ROBUST]).mask(owed)
    return trials


def completed(trials: pd.DataFrame, x: str = CLEAN, y: str = ROBUST) -> pd.DataFrame:
    """The trials that finished the full budget and measured x and y."""
    return trials[(trials["budget"] == "full") & (trials["status"] == "FINISHED")].dropna(subset=[x, y])


def best_per_method(trials: pd.DataFrame) -> pd.DataFrame:
    """Per method, the completed trial with the highest robust (then clean) accuracy."""
    if trials.empty:
        return trials
    return completed(trials).sort_values([ROBUST, CLEAN], ascending=False).groupby("method", sort=False).head(1)


def non_dominated(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows that no other row beats on both x and y (maximized), sorted by x."""
    keep = []
    for i, row in points.iterrows():
        others = points.drop(index=i)
        at_least = (others[x] >= row[x]) & (others[y] >= row[y])
        if not (at_least & ((others[x] > row[x]) | (others[y] > row[y]))).any():
            keep.append(i)
    return points.loc[keep].sort_values(x)


def pareto_front(trials: pd.DataFrame, x: str = CLEAN, y: str = ROBUST) -> pd.DataFrame:
    """The trials that ran the full budget and that no other such trial beats on both x and y
    (maximized), sorted by x. ASHA-stopped, failed and unfinished trials are never on it."""
    if trials.empty:
        return trials
    return non_dominated(completed(trials, x, y), x, y)


def mean_interval(values: pd.Series | list[float]) -> tuple[float, float]:
    """(mean, half-width) of the two-sided 95% Student-t interval for the mean over seeds:
    t(0.975, n - 1) * s / sqrt(n), s the sample standard deviation; half-width nan for one seed."""
    values = pd.Series(values, dtype=float)
    n = len(values)
    if n < 2:
        return float(values.mean()), math.nan
    return float(values.mean()), float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * values.std(ddof=1) / math.sqrt(n))


def confirmed_configs(trials: pd.DataFrame) -> pd.DataFrame:
    """Per confirmed configuration (its full-budget confirm runs grouped by config_id): method,
    hyperparameters, number of seeds, clean and robust mean and interval half-width, and the
    search run it came from."""
    search = trials[trials["stage"] == SEARCH]
    confirm = completed(trials[trials["stage"] == CONFIRM])
    rows = []
    for config, runs in confirm.groupby("config_id", sort=False):
        clean, clean_half = mean_interval(runs[CLEAN])
        robust, robust_half = mean_interval(runs[ROBUST])
        origin = search.loc[search["config_id"] == config, "run_id"]
        rows.append({"config_id": config, "method": runs["method"].iloc[0],
                     "hyperparameters": hyperparameters(runs.iloc[0]), "seeds": len(runs),
                     "clean": clean, "clean_half": clean_half, "robust": robust, "robust_half": robust_half,
                     "search_run_id": origin.iloc[0] if len(origin) else ""})
    columns = ["config_id", "method", "hyperparameters", "seeds", "clean", "clean_half", "robust", "robust_half",
               "search_run_id"]
    return pd.DataFrame(rows, columns=columns)


def confirmed_front(configs: pd.DataFrame) -> pd.DataFrame:
    """The confirmed configurations whose means no other's means dominate, sorted by clean."""
    return non_dominated(configs, "clean", "robust") if not configs.empty else configs


def plus_minus(mean: float, half: float) -> str:
    return f"{mean:.3f} ± {half:.3f}" if not math.isnan(half) else f"{mean:.3f} (1 seed)"


def confirmed_table(front: pd.DataFrame) -> pd.DataFrame:
    """The confirmed front as printed: `mean ± half-width` of the 95% Student-t interval over
    seeds, or where the configurations were judged on per-example records (`settled` and the
    interval's ends among their columns, analyse) of the interval over seeds and examples, and
    whether each place is settled."""
    table = pd.DataFrame({
        "method": front["method"],
        "hyperparameters": front["hyperparameters"],
        "seeds": front["seeds"],
        "clean_acc": [plus_minus(m, h) for m, h in zip(front["clean"], front["clean_half"], strict=True)],
        "robust_acc": [plus_minus(m, h) for m, h in zip(front["robust"], front["robust_half"], strict=True)],
        "config_id": front["config_id"],
    }).reset_index(drop=True)
    if "settled" not in front:
        return table
    for objective in ("clean", "robust"):
        halves = (front[f"{objective}_high"] - front[f"{objective}_low"]) / 2
        table[f"{objective}_acc"] = [plus_minus(m, h) for m, h in zip(front[objective], halves, strict=True)]
    table.insert(5, "settled", ["yes" if done else "no" for done in front["settled"]])
    return table


def select_for_confirmation(trials: pd.DataFrame, top: int, per_method: bool) -> pd.DataFrame:
    """The search configurations a confirm stage retrains, at most `top`: with `per_method`
    each method's best first (highest robust, then clean, accuracy: non-dominated among its
    method's), then the search front's points, each time the one that adds the most hypervolume
    to those chosen. One row per configuration (runs recorded before config ids existed count
    as configurations of their own)."""
    search = trials[trials["stage"] == SEARCH]
    search = search[~search["config_id"].duplicated() | (search["config_id"] == "")]
    chosen = list(best_per_method(search).index) if per_method else []
    candidates = [i for i in pareto_front(search).index if i not in chosen]

    def area(rows: list) -> float:
        return hypervolume(search.loc[rows, [CLEAN, ROBUST]].to_numpy())

    while len(chosen) < top and candidates:
        base = area(chosen)
        best = max(candidates, key=lambda i: (area([*chosen, i]) - base, search.loc[i, ROBUST]))
        chosen.append(best)
        candidates.remove(best)
    return search.loc[chosen[:top]]


def hyperparameters(row: pd.Series) -> str:
    """`eps=0.7` from the run's `params.hp.*` columns, in short form: the hyperparameters the
    search varied (its `searched` tag; every one for runs recorded without it), not those a
    study fixed or left to their rule (`step_size: None`, i.e. derived from epsilon)."""
    prefix = "params.hp."
    searched = row.get("searched")
    shown = set(searched.split(",")) if isinstance(searched, str) else None
    items = [(k[len(prefix):], v) for k, v in row.items()
             if k.startswith(prefix) and pd.notna(v) and v != "None" and (shown is None or k[len(prefix):] in shown)]
    return ", ".join(f"{short_name(k)}={short_value(v)}" for k, v in sorted(items))


def front_table(front: pd.DataFrame) -> pd.DataFrame:
    """The front as the columns a reader wants: method, hyperparameters, clean accuracy, the
    search's robust accuracy (cheap, e.g. PGD) beside the final strong one (e.g. AutoAttack),
    the trial's training seconds, and whether an attack-failure indicator fired (`!`: see the
    run's robust_study.eval_warning)."""
    table = pd.DataFrame({
        "method": front["method"],
        "hyperparameters": [hyperparameters(row) for _, row in front.iterrows()],
        "clean_acc": front[CLEAN],
        "search_robust": front[SEARCH_ROBUST],
        "final_robust": column(front, FINAL_ROBUST),
        "train_s": column(front, "metrics.train_time_s").round(1),
        "warn": ["!" if warning else "" for warning in column(front, "eval_warning", "")],
        "run_id": front["run_id"],
    }).reset_index(drop=True)
    optional = [name for name in ("final_robust", "train_s") if table[name].isna().all()]
    return table.drop(columns=optional)


def plot_front(trials: pd.DataFrame, front: pd.DataFrame, robust_metric: str, path: Path,
               configs: pd.DataFrame | None = None) -> None:
    """Every search trial coloured by method (stopped-early ones hollow), the front as a step
    line through ringed points (so a front of one point, or of coinciding trials, still shows).
    With confirmed `configs`: the search faint behind, each configuration's means with 95%
    intervals on both axes, and the confirmed front through its means."""
    confirmed = configs is not None and not configs.empty
    paired = confirmed and "settled" in configs  # intervals over seeds and examples, settled places
    faint = 0.25 if confirmed else 1.0
    fig, ax = plt.subplots(figsize=(6.5, 5))
    colors = {}
    for method, group in trials.dropna(subset=[CLEAN, ROBUST]).groupby("method"):
        full = group["budget"] == "full"
        points = ax.scatter(group.loc[full, CLEAN], group.loc[full, ROBUST], s=36, alpha=faint,
                            label=None if confirmed else method)
        colors[method] = points.get_facecolor()[0][:3]  # the method's colour, without the faintness
        ax.scatter(group.loc[~full, CLEAN], group.loc[~full, ROBUST], s=36, alpha=faint,
                   facecolors="none", edgecolors=[colors[method]])
    if not front.empty:
        ax.step(front[CLEAN], front[ROBUST], where="pre", color="black", lw=1.2, alpha=faint,
                label="search front" if confirmed else None)
        ax.scatter(front[CLEAN], front[ROBUST], s=110, facecolors="none", edgecolors="black", lw=1.2, alpha=faint,
                   label=None if confirmed else "Pareto front")
    if confirmed:
        for method, group in configs.groupby("method"):
            if paired:  # intervals over seeds and examples; a settled place filled, an open one hollow
                xerr = [group["clean"] - group["clean_low"], group["clean_high"] - group["clean"]]
                yerr = [group["robust"] - group["robust_low"], group["robust_high"] - group["robust"]]
            else:
                xerr, yerr = group["clean_half"].fillna(0), group["robust_half"].fillna(0)
            color = colors.get(method)
            ax.errorbar(group["clean"], group["robust"], xerr=xerr, yerr=yerr, fmt="none", capsize=3, color=color)
            settled = group["settled"].astype(bool) if paired else pd.Series(True, index=group.index)
            label = f"{method} (mean, {CONFIDENCE:.0%} CI"
            if settled.any():
                ax.scatter(group.loc[settled, "clean"], group.loc[settled, "robust"], s=40, color=color, zorder=4,
                           label=label + (", settled)" if paired else ")"))
            if not settled.all():
                ax.scatter(group.loc[~settled, "clean"], group.loc[~settled, "robust"], s=40, facecolors="white",
                           edgecolors=[color], zorder=4, label=label + ", not settled)")
        best = confirmed_front(configs)
        ax.step(best["clean"], best["robust"], where="pre", color="black", lw=1.6)
        ax.scatter(best["clean"], best["robust"], s=140, facecolors="none", edgecolors="black", lw=1.6,
                   label="confirmed front", zorder=3)
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel(f"robust accuracy ({robust_label(robust_metric)})")
    ax.set_title("confirmed over seeds and examples (filled: settled)" if paired
                 else "confirmed over seeds (faint: the search)" if confirmed
                 else "clean vs robust accuracy (hollow: stopped early)")
    finish(fig, ax, path)


def robust_label(metric: str) -> str:
    """`pgd_l2_eps0.5_acc` -> `pgd_l2, eps = 0.5`."""
    attack, sep, rest = metric.partition("_eps")
    return f"{attack}, eps = {rest.removesuffix('_acc')}" if sep else metric


def study_trials(client: MlflowClient, parent_run_id: str) -> pd.DataFrame:
    """The trial runs of a study, both stages, with the front's axes (what every front-reading
    command takes)."""
    return with_axes(trial_runs(client, parent_run_id))


@dataclass
class StudyAnalysis:
    """A study's fronts as `write_analysis` found them: all trial runs, the search trials and
    front, the confirmed configurations and front (empty without a confirm stage), the robust
    axes' metrics and the fronts' hypervolumes."""

    trials: pd.DataFrame
    search: pd.DataFrame
    front: pd.DataFrame
    configs: pd.DataFrame
    confirmed: pd.DataFrame
    robust_metric: str
    confirm_robust_metric: str
    hypervolumes: dict[str, float]
    verdicts: Verdicts | None  # the paired view of the confirm stage, where its runs have per-example records


def analyse(client: MlflowClient, parent_run_id: str) -> StudyAnalysis:
    trials = study_trials(client, parent_run_id)
    search = trials[trials["stage"] == SEARCH]
    front = pareto_front(search)
    configs = confirmed_configs(trials)
    tags = client.get_run(parent_run_id).data.tags
    robust_metric = tags.get(FINAL_ROBUST_METRIC_TAG) or tags.get(ROBUST_METRIC_TAG, "robust_acc")
    confirm_robust_metric = tags.get(CONFIRM_ROBUST_METRIC_TAG, robust_metric)
    hypervolumes = {"search_hypervolume": hypervolume(front[[CLEAN, ROBUST]].to_numpy())}
    verdicts = None
    if not configs.empty:
        runs = completed(trials[trials["stage"] == CONFIRM])
        final = bool(column(runs, FINAL_ROBUST).notna().all())
        names = {row.config_id: f"{row.method} ({row.hyperparameters})" if row.hyperparameters else row.method
                 for row in configs.itertuples()}
        verdicts = paired_verdicts(client, runs, final, confirm_robust_metric if final else tags.get(
            ROBUST_METRIC_TAG, "robust_acc"), names)
        if verdicts is not None:  # the intervals over seeds and examples, and whether each place is settled
            paired = verdicts.table.set_index("config_id")
            for name in ("clean_low", "clean_high", "robust_low", "robust_high", "settled"):
                configs[name] = configs["config_id"].map(paired[name])
    confirmed = confirmed_front(configs)
    if not configs.empty:
        hypervolumes["confirmed_hypervolume"] = hypervolume(confirmed[["clean", "robust"]].to_numpy())
    return StudyAnalysis(trials, search, front, configs, confirmed, robust_metric, confirm_robust_metric,
                         hypervolumes, verdicts)


def write_analysis(client: MlflowClient, parent_run_id: str, out: Path) -> StudyAnalysis:
    """front.csv / .png, confirmed_front.csv / .png (after a confirm stage) and hypervolume.png
    (its progress over the search's finished trials) under `out`, logged to the study run under
    `analysis/`, with the fronts' hypervolumes as the run's metrics."""
    study = analyse(client, parent_run_id)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "front.csv", out / "front.png", out / "hypervolume.png"]
    front_table(study.front).to_csv(files[0], index=False)
    plot_front(study.search, study.front, study.robust_metric, files[1], study.configs)
    started = client.get_run(parent_run_id).info.start_time
    progress = hypervolume_progress(study.search[study.search["status"] == "FINISHED"], CLEAN, ROBUST, started)
    plot_hypervolume(progress, study.hypervolumes.get("confirmed_hypervolume"), files[2])
    if not study.configs.empty:
        files += [out / "confirmed_front.csv", out / "confirmed_front.png"]
        on_front = study.configs["config_id"].isin(study.confirmed["config_id"])
        study.configs.assign(on_front=on_front).to_csv(files[3], index=False)
        plot_front(study.search, study.front, study.confirm_robust_metric, files[4], study.configs)
    for path in files:
        client.log_artifact(parent_run_id, str(path), "analysis")
    now = int(time.time() * 1000)
    client.log_batch(parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in study.hypervolumes.items()])
    return study


def print_fronts(study: StudyAnalysis) -> None:
    """The search front (with warnings, certificate violations and failures) and, after a
    confirm stage, the confirmed front."""
    trials, front, configs = study.trials, study.front, study.configs
    print(f"\nPareto front ({len(front)} of {len(study.search)} trials; clean vs {robust_label(study.robust_metric)}; "
          "trials that ran the full budget):")
    table = front_table(front).drop(columns="run_id")
    print(table.to_string(index=False) if not table.empty else "(no trial ran the full budget)")
    for _, trial in front[front["eval_warning"].astype(bool)].iterrows():
        print(f"! {trial['method']} ({trial['run_id'][:8]}): {trial['eval_warning']}")
    if not configs.empty:
        print_confirmed(study)
    violations = column(trials, "metrics.final_certificate_violations", 0.0).fillna(0)
    for _, trial in trials[violations > 0].iterrows():
        print(f"error: certificate violated: {trial['method']} ({trial['run_id']}): "
              f"{int(violations[trial.name])} adversarial example(s) inside the certified radius")
    failed = int((trials["status"] == "FAILED").sum())
    if failed:
        print(f"{failed} trial(s) failed: see the tag robust_study.failure of their MLflow runs")


def confirmed_heading(study: StudyAnalysis) -> str:
    """What the confirmed front's table shows: its size, seeds, axes and intervals."""
    trials, configs, verdicts = study.trials, study.configs, study.verdicts
    seeds = ", ".join(str(s) for s in sorted(trials.loc[trials["stage"] == CONFIRM, "seed"].dropna().unique()))
    head = (f"Confirmed front ({len(study.confirmed)} of {len(configs)} configurations; seeds {seeds}; "
            f"clean vs {robust_label(study.confirm_robust_metric)}; ")
    if verdicts is None:
        return head + f"mean ± {CONFIDENCE:.0%} Student-t half-width over seeds)"
    settled = int(verdicts.table["settled"].sum())
    return head + (f"mean ± {verdicts.confidence:.0%} interval over seeds and {verdicts.examples} examples; "
                   f"{settled} of {len(configs)} places settled)")


def verdicts_heading(verdicts: Verdicts) -> str:
    return (f"Paired verdicts (A - B in points, {verdicts.confidence:.0%} interval, P(A > B); "
            f"equivalent: inside ±{100 * verdicts.delta:g}; places: {verdicts.correction})")


def print_confirmed(study: StudyAnalysis) -> None:
    """The confirmed front: with per-example records, each configuration's interval over seeds
    and examples, whether its place is settled, and the paired verdicts of the front's pairs;
    without them (a study recorded before records existed), Student-t intervals over seeds."""
    verdicts = study.verdicts
    print(f"\n{confirmed_heading(study)}:")
    print(confirmed_table(study.confirmed).to_string(index=False))
    if verdicts is None:
        print("(no per-example records in these runs, recorded before they existed: intervals over seeds only, "
              "no paired verdicts)")
    elif verdicts.lines:
        print(f"{verdicts_heading(verdicts)}:")
        for line in verdicts.lines:
            print(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    parser = study_parser("analysis.pareto", __doc__)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for front.csv and front.png")
    args = parser.parse_args(argv)
    client, parent = open_study(args)
    print_fronts(write_analysis(client, parent, args.out))
    print(f"wrote front.csv, front.png, hypervolume.png (and confirmed_front.* after a confirm stage) to "
          f"{args.out}; logged to run {parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
