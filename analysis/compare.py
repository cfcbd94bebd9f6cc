"""Confirmed configurations of several studies side by side, read from MLflow only.

Per confirmed configuration (a study's confirm runs grouped by config_id) the mean and 95%
Student-t interval over its seeds of any metrics (`--metrics`), and one front across studies:
clean accuracy against `--robust` (e.g. AutoAttack at l2 1.0), with `--certified` drawn beside
it (hollow) where the models have a certificate, and robust accuracy against compute per trial.
It answers "which family wins where" when each family was confirmed in its own study.

`python -m analysis.compare --tracking-uri URI --experiments kernel_reg_fashion sgr lipschitz
--robust final_autoattack_l2_eps1_acc --certified final_certified_eps1_acc --out OUT` writes
summary.csv, summary.md, front.png and cost.png to OUT; `--summaries OLD/summary.csv` joins an
earlier run's table (a study whose MLflow store is elsewhere or gone).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from analysis.pareto import (  # noqa: E402
    CONFIDENCE,
    completed,
    hyperparameters,
    mean_interval,
    non_dominated,
    plus_minus,
    robust_label,
    study_trials,
    verdicts_heading,
)
from analysis.plotting import finish  # noqa: E402
from analysis.records import CONFIRM, find_study_run  # noqa: E402
from analysis.report import SPEC_FILE  # noqa: E402
from analysis.verdicts import confirm_records, judge  # noqa: E402

CLEAN_METRIC = "final_clean_acc"
COST_METRIC = "compute_time_s"


def confirmed_summary(trials: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Per confirmed configuration of one study: method, hyperparameters, seeds and, per metric,
    `{metric}` (the mean over seeds) and `{metric}_half` (the 95% interval's half-width; nan
    where a metric was not measured or one seed has it)."""
    confirm = completed(trials[trials["stage"] == CONFIRM])
    rows = []
    for config, runs in confirm.groupby("config_id", sort=False):
        row = {"config_id": config, "method": runs["method"].iloc[0],
               "hyperparameters": hyperparameters(runs.iloc[0]), "seeds": len(runs)}
        for metric in metrics:
            values = runs.get(f"metrics.{metric}", pd.Series(dtype=float)).dropna()
            row[metric], row[f"{metric}_half"] = mean_interval(values) if len(values) else (math.nan, math.nan)
        rows.append(row)
    return pd.DataFrame(rows, columns=["config_id", "method", "hyperparameters", "seeds"]
                        + [name for metric in metrics for name in (metric, f"{metric}_half")])


def compare_studies(client: MlflowClient, experiments: list[str], metrics: list[str]) -> pd.DataFrame:
    """confirmed_summary of each experiment's newest study, one table, with a `study` column."""
    tables = []
    for experiment in experiments:
        trials = study_trials(client, find_study_run(client, experiment))
        tables.append(confirmed_summary(trials, metrics).assign(study=experiment))
    summary = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return summary[["study"] + [c for c in summary.columns if c != "study"]]


def judged_examples(client: MlflowClient, parent_run_id: str) -> tuple:
    """Which examples a study's confirmed configurations were judged on: its data set, the split
    of its judging evaluation (the final one where it has one), that evaluation's sample_seed and,
    for the validation split, how it was cut."""
    with tempfile.TemporaryDirectory() as folder:
        spec = yaml.safe_load(Path(client.download_artifacts(parent_run_id, SPEC_FILE, folder)).read_text())
    confirm = spec.get("confirm") or {}
    judged = confirm.get("final_eval") or spec.get("final_eval") or spec.get("eval") or {}
    split = judged.get("split", "test")
    cut = (spec["data"].get("val"), spec["data"].get("seed")) if split == "val" else ()
    return spec["data"]["dataset"], split, judged.get("sample_seed", 0), cut


def paired_across(client: MlflowClient, experiments: list[str], robust: str) -> list[str]:
    """Paired verdicts between the studies' confirmed configurations on the examples they share,
    as lines; one line saying why not where a run has no records or the studies judged
    different examples."""
    parents = {experiment: find_study_run(client, experiment) for experiment in experiments}
    runs, names = [], {}
    for experiment, parent in parents.items():
        trials = study_trials(client, parent)
        confirm = completed(trials[trials["stage"] == CONFIRM])
        runs.append(confirm.assign(config_id=experiment + "/" + confirm["config_id"]))
        names.update({f"{experiment}/{row.config_id}": f"{experiment}/{row.method}" for row in confirm.itertuples()})
    columns = {"clean": CLEAN_METRIC, "robust": robust}
    records = confirm_records(client, pd.concat(runs, ignore_index=True), columns)
    if records is None:
        return [f"paired verdicts: none, some confirm runs have no per-example records of {robust} (recorded "
                "before records existed, or not measured)"]
    judged = {experiment: judged_examples(client, parent) for experiment, parent in parents.items()}
    if len(set(judged.values())) > 1:
        return ["paired verdicts: none, the studies judged different examples (data set, split, sample_seed): "
                + "; ".join(f"{e}: {j[0]} {j[1]} seed {j[2]}" for e, j in judged.items())]
    verdicts = judge(records, columns, names)
    if verdicts is None:
        return ["paired verdicts: none, the configurations share no evaluated example"]
    return [verdicts_heading(verdicts) + ":", *(f"  {line}" for line in verdicts.lines)]


def read_summaries(paths: list[Path], metrics: list[str]) -> pd.DataFrame:
    """Earlier `summary.csv` tables of this command (studies whose MLflow store is elsewhere or
    gone), cut to `metrics`; a metric a table lacks is nan (unmeasured)."""
    columns = ["study", "config_id", "method", "hyperparameters", "seeds"] + [
        name for metric in metrics for name in (metric, f"{metric}_half")]
    tables = []
    for path in paths:
        table = pd.read_csv(path, dtype={"config_id": str})
        if missing := [c for c in columns[:5] if c not in table.columns]:
            raise LookupError(f"{path} is not a summary.csv of this command: no column {', '.join(missing)}")
        tables.append(table.reindex(columns=columns).fillna({"hyperparameters": ""}))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)


def cross_front(summary: pd.DataFrame, robust: str) -> pd.DataFrame:
    """The configurations that measured `robust` whose means (clean, robust) no other's dominate."""
    measured = summary.dropna(subset=[CLEAN_METRIC, robust])
    return non_dominated(measured, CLEAN_METRIC, robust) if not measured.empty else measured


def markdown(summary: pd.DataFrame, metrics: list[str]) -> str:
    """The summary as a markdown table, each metric as `mean ± half-width`, `—` where unmeasured."""
    header = ["study", "method", "hyperparameters", "seeds"] + metrics
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, row in summary.iterrows():
        cells = [str(row["study"]), str(row["method"]), str(row["hyperparameters"]), str(row["seeds"])]
        cells += ["—" if math.isnan(row[m]) else plus_minus(row[m], row[f"{m}_half"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_cross_front(summary: pd.DataFrame, robust: str, certified: str | None, path: Path) -> None:
    """Each configuration's means with 95% intervals: clean vs `robust` (filled) and vs
    `certified` (hollow, same colour), one colour per study and each point named by its method,
    the front through the filled ones."""
    fig, ax = plt.subplots(figsize=(7, 5.2))
    for study, group in summary.groupby("study", sort=False):
        color = None
        if group[robust].notna().any():
            bars = ax.errorbar(group[CLEAN_METRIC], group[robust], xerr=group[f"{CLEAN_METRIC}_half"].fillna(0),
                               yerr=group[f"{robust}_half"].fillna(0), fmt="o", ms=6, capsize=3,
                               label=f"{study}: {robust_label(robust.removeprefix('final_'))}")
            color = bars[0].get_color()
        if certified and group[certified].notna().any():
            ax.errorbar(group[CLEAN_METRIC], group[certified], xerr=group[f"{CLEAN_METRIC}_half"].fillna(0),
                        yerr=group[f"{certified}_half"].fillna(0), fmt="o", ms=7, capsize=3, mfc="none",
                        color=color, label=f"{study}: {robust_label(certified.removeprefix('final_'))}")
    for _, row in summary.iterrows():
        y = row[robust] if not math.isnan(row[robust]) else row[certified or robust]
        if not math.isnan(y):
            ax.annotate(row["method"], (row[CLEAN_METRIC], y), xytext=(4, 3), textcoords="offset points",
                        fontsize=6.5, alpha=0.8)
    front = cross_front(summary, robust)
    if not front.empty:
        ax.step(front[CLEAN_METRIC], front[robust], where="pre", color="black", lw=1.4, label="front (filled)")
    ax.set_xlabel("clean accuracy")
    ax.set_ylabel("accuracy under attack (filled) / certified (hollow)")
    ax.set_title(f"confirmed configurations: mean, {CONFIDENCE:.0%} CI over seeds")
    finish(fig, ax, path, legend_size=7)


def plot_cost(summary: pd.DataFrame, robust: str, certified: str | None, path: Path) -> None:
    """Robust (filled) and certified (hollow) accuracy against compute seconds per trial."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for study, group in summary.groupby("study", sort=False):
        points = ax.scatter(group[COST_METRIC], group[robust], label=study)
        if certified:
            ax.scatter(group[COST_METRIC], group[certified], facecolors="none",
                       edgecolors=[points.get_facecolor()[0][:3]], s=48)
    ax.set_xscale("log")
    ax.set_xlabel("compute seconds per trial (training and evaluation, one CPU core)")
    ax.set_ylabel("robust (filled) / certified (hollow) accuracy")
    finish(fig, ax, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri")
    parser.add_argument("--experiments", nargs="+", default=[])
    parser.add_argument("--summaries", nargs="+", type=Path, default=[],
                        help="earlier summary.csv files of this command, joined to the table")
    parser.add_argument("--robust", required=True, help="the front's robust metric, e.g. final_autoattack_l2_eps1_acc")
    parser.add_argument("--certified", help="a certified metric drawn beside it, e.g. final_certified_eps1_acc")
    parser.add_argument("--metrics", nargs="*", default=[], help="more metrics for the table")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    metrics = list(dict.fromkeys([CLEAN_METRIC, args.robust] + ([args.certified] if args.certified else [])
                                 + args.metrics + [COST_METRIC]))
    if not args.experiments and not args.summaries:
        parser.error("give --experiments (with --tracking-uri), --summaries, or both")
    if args.experiments and not args.tracking_uri:
        parser.error("--experiments needs --tracking-uri")
    try:
        studies = ([compare_studies(MlflowClient(args.tracking_uri), args.experiments, metrics)]
                   if args.experiments else [])
    except LookupError as error:
        print(f"error: --experiments: {error}", file=sys.stderr)
        return 2
    try:
        earlier = read_summaries(args.summaries, metrics)
    except (LookupError, OSError, pd.errors.ParserError) as error:
        print(f"error: --summaries: {error}", file=sys.stderr)
        return 2
    summary = pd.concat([*studies, earlier], ignore_index=True) if studies else earlier
    args.out.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.out / "summary.csv", index=False)
    (args.out / "summary.md").write_text(markdown(summary, metrics))
    plot_cross_front(summary, args.robust, args.certified, args.out / "front.png")
    plot_cost(summary, args.robust, args.certified, args.out / "cost.png")
    print(markdown(summary, metrics))
    front = cross_front(summary, args.robust)
    print(f"front ({robust_label(args.robust.removeprefix('final_'))}): "
          + ", ".join(f"{row.study}/{row.method}" for row in front.itertuples()))
    if len(args.experiments) > 1 or (args.experiments and studies[0]["config_id"].nunique() > 1):
        lines = paired_across(MlflowClient(args.tracking_uri), args.experiments, args.robust)
        print("\n".join(lines))
        with open(args.out / "summary.md", "a") as summary_md:
            summary_md.write("\n" + "\n".join(lines) + "\n")
    print(f"wrote summary.csv, summary.md, front.png, cost.png to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
