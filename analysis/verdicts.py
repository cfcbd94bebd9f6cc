"""The confirmed front from per-example records: each configuration's clean and robust accuracy
with an interval over its seeds and the shared examples, the paired verdict of every pair, and
whether each configuration's place is settled with confidence.

A configuration is settled off the front when another dominates it with confidence: not worse
by `delta` or more on either objective and better on one. It is settled on the front when, with
confidence, no other can dominate it: each other is worse than it on some objective, or better
by less than `delta` on every one (equivalent or worse). The tests that decide these places are
corrected together for multiple comparisons by Holm's step-down method (as S-Race does). A study
whose confirm runs lack records (recorded before they existed) falls back to the Student-t
intervals over seeds (analysis.pareto).
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

from analysis.paired import DRAWS, Comparison, Evidence

RECORDS_ARTIFACT = "eval/examples.parquet"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per run's records: noise
OBJECTIVES = ("clean", "robust")


@dataclass
class Verdicts:
    """The paired view of a confirm stage: per configuration (`table`: mean, interval, seeds,
    examples, on the front by its means, settled), every ordered pair's comparison per
    objective, the verdict lines to print, and the confidence, margin and correction used."""

    table: pd.DataFrame
    comparisons: dict[tuple[str, str], dict[str, Comparison]]
    lines: list[str]
    confidence: float
    delta: float
    examples: int  # the fewest examples a configuration is judged on
    correction: str = "Holm over the tests that place the configurations"
    evidence: dict[tuple[str, str], dict[str, Evidence]] = field(default_factory=dict)  # per pair and objective


def record_columns(final: bool, robust_metric: str) -> dict[str, str]:
    """The records' columns of the two objectives: the final evaluation's where the runs had one."""
    prefix = "final_" if final else ""
    return {"clean": f"{prefix}clean_acc", "robust": f"{prefix}{robust_metric}"}


def run_records(client: MlflowClient, run_id: str, folder: str) -> pd.DataFrame | None:
    """A trial run's per-example records, None where it has none."""
    if not any(a.path == RECORDS_ARTIFACT for a in client.list_artifacts(run_id, "eval")):
        return None
    return pd.read_parquet(client.download_artifacts(run_id, RECORDS_ARTIFACT, folder))


def evidence(records: dict[str, list[pd.DataFrame]], column: str) -> dict[str, np.ndarray]:
    """Per configuration a (seeds x examples) 0/1 matrix of `column` on the examples every run
    of these configurations measured, in one order."""
    measured = [set(frame.loc[frame[column].notna(), "index"]) for frames in records.values() for frame in frames]
    shared = sorted(set.intersection(*measured))
    return {config: np.stack([frame.set_index("index").loc[shared, column].astype(float).to_numpy()
                              for frame in frames]) for config, frames in records.items()}


def holm(pvalues: list[float], alpha: float) -> list[bool]:
    """Which hypotheses Holm's step-down method rejects at family-wise error `alpha`."""
    order = np.argsort(pvalues, kind="stable")
    rejected = [False] * len(pvalues)
    for rank, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - rank):
            break
        rejected[i] = True
    return rejected


def dominance_p(comparisons: dict[str, Comparison], delta: float) -> float:
    """p-value of "A dominates B" from A - B per objective: not worse by delta on every objective
    (each a non-inferiority test; all must hold: the largest p) and better on one (the smallest)."""
    not_worse = max(c.p_not_worse(delta) for c in comparisons.values())
    better = min(c.p_superior() for c in comparisons.values())
    return max(not_worse, better)


def means_dominate(a: dict[str, float], b: dict[str, float]) -> bool:
    return all(a[o] >= b[o] for o in OBJECTIVES) and any(a[o] > b[o] for o in OBJECTIVES)


def not_dominated_p(comparisons: dict[str, Comparison], delta: float) -> float:
    """p-value of "B cannot dominate A" from A - B per objective: A is better on some objective
    (the smallest superiority p), or B is better by delta or more on none (A not worse by delta
    on every objective: the largest non-inferiority p)."""
    better_somewhere = min(c.p_superior() for c in comparisons.values())
    never_beaten = max(c.p_not_worse(delta) for c in comparisons.values())
    return min(better_somewhere, never_beaten)


def place(means: dict[str, dict[str, float]], comparisons: dict[tuple[str, str], dict[str, Comparison]],
          confidence: float, delta: float) -> tuple[dict[str, bool], dict[str, bool]]:
    """(on the front by its means, settled) per configuration, Holm-corrected over every test
    that decides a place."""
    names = list(means)
    on_front = {a: not any(means_dominate(means[b], means[a]) for b in names if b != a) for a in names}
    tests: list[tuple[str, float]] = []  # (configuration it settles, p-value)
    for a in names:
        if on_front[a]:  # no other may dominate it
            tests += [(a, not_dominated_p(comparisons[(a, b)], delta)) for b in names if b != a]
        else:  # some configuration that dominates it by the means must do so with confidence
            tests += [(a, dominance_p(comparisons[(b, a)], delta)) for b in names
                      if b != a and means_dominate(means[b], means[a])]
    rejected = holm([p for _, p in tests], 1 - confidence)
    settled = {}
    for a in names:
        outcomes = [ok for (name, _), ok in zip(tests, rejected, strict=True) if name == a]
        settled[a] = all(outcomes) if on_front[a] else any(outcomes)
    return on_front, settled


def confirm_records(client: MlflowClient, runs: pd.DataFrame,
                    columns: dict[str, str]) -> dict[str, list[pd.DataFrame]] | None:
    """Per configuration, the records of its runs (`runs`: run_id, config_id); None where a run
    has none or lacks an objective's column."""
    records: dict[str, list[pd.DataFrame]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for run in runs.itertuples():
            frame = run_records(client, run.run_id, f"{folder}/{run.run_id}")
            if frame is None or not set(columns.values()) <= set(frame.columns):
                return None
            records.setdefault(run.config_id, []).append(frame)
    return records


def judge(records: dict[str, list[pd.DataFrame]], columns: dict[str, str], describe: dict[str, str],
          confidence: float = 0.95, delta: float = 0.01, draws: int = DRAWS) -> Verdicts | None:
    """The paired view of configurations from their runs' records (`columns`: each objective's
    records column): each configuration judged on the examples all its runs measured, each pair
    on the examples both measured (a configuration that left a race keeps its verdicts on the
    examples it had); None where some configuration or pair shares no example."""
    names = list(records)
    alone = {a: {o: evidence({a: records[a]}, column) for o, column in columns.items()} for a in names}
    together = {(a, b): {o: evidence({a: records[a], b: records[b]}, column) for o, column in columns.items()}
                for a, b in combinations(names, 2)}
    if any(m[o][a].shape[1] == 0 for m in [*alone.values(), *together.values()] for o in OBJECTIVES for a in m[o]):
        return None
    judged = {a: {o: Evidence(alone[a][o], draws) for o in OBJECTIVES} for a in names}
    pairs = {key: {o: Evidence(matrices[o], draws) for o in OBJECTIVES} for key, matrices in together.items()}
    pairs.update({(b, a): sides for (a, b), sides in list(pairs.items())})
    estimates = {a: {o: judged[a][o].estimate(a, confidence) for o in OBJECTIVES} for a in names}
    comparisons = {(a, b): {o: pairs[(a, b)][o].compare(a, b, confidence, delta) for o in OBJECTIVES}
                   for a in names for b in names if a != b}
    means = {a: {o: estimates[a][o].mean for o in OBJECTIVES} for a in names}
    on_front, settled = place(means, comparisons, confidence, delta)
    table = pd.DataFrame([{
        "config_id": a, "seeds": len(records[a]), "examples": alone[a]["robust"][a].shape[1],
        **{f"{o}{suffix}": getattr(estimates[a][o], field_name) for o in OBJECTIVES
           for suffix, field_name in (("", "mean"), ("_low", "low"), ("_high", "high"))},
        "on_front": on_front[a], "settled": settled[a]} for a in names])
    lines = [f"{describe.get(a, a)} vs {describe.get(b, b)}: "
             + ", ".join(comparisons[(a, b)][o].describe(o) for o in ("robust", "clean"))
             for a, b in shown_pairs(names, on_front, means)]
    return Verdicts(table, comparisons, lines, confidence, delta, int(table["examples"].min()),
                    evidence=pairs)


def paired_verdicts(client: MlflowClient, confirm_runs: pd.DataFrame, final: bool, robust_metric: str,
                    describe: dict[str, str], confidence: float = 0.95, delta: float = 0.01) -> Verdicts | None:
    """The paired view of the confirm stage's full-budget runs (`confirm_runs`: run_id, config_id),
    `describe` naming each configuration as printed; None where a run lacks records."""
    columns = record_columns(final, robust_metric)
    records = confirm_records(client, confirm_runs, columns)
    return judge(records, columns, describe, confidence, delta) if records is not None else None


def shown_pairs(names: list[str], on_front: dict[str, bool],
                means: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    """The pairs worth a line: the front's neighbours (by clean accuracy), and each configuration
    just off the front against the front's configurations that dominate it by their means."""
    front = sorted((a for a in names if on_front[a]), key=lambda a: means[a]["clean"])
    neighbours = zip(front, front[1:], strict=False)
    pairs = [(b, a) if means[b]["robust"] >= means[a]["robust"] else (a, b) for a, b in neighbours]
    pairs += [(b, a) for a in names if not on_front[a] for b in front if means_dominate(means[b], means[a])]
    return pairs
