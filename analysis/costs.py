"""Where a study's wall time went: its phases in seconds and shares, as the launcher logs them on
the study run (`cost_*_s` metrics) and the launcher and the report show them.

The phases follow the driver's clock and add up to the run's wall time: start-up (process start
to the first trial), training and search evaluation (the search's wall time, split by the trials'
own measured seconds of each), strong evaluation (the wait for the search's strong evaluations
after its last trial; those run beside the search are counted as task seconds), the confirm
stage (its trials and its race), and the report.
"""

from __future__ import annotations

import math

import pandas as pd

PHASES = {"start-up": "cost_startup_s", "training": "cost_training_s", "search evaluation": "cost_search_eval_s",
          "strong evaluation": "cost_strong_eval_s", "confirm stage": "cost_confirm_s", "report": "cost_report_s"}
TOTAL = "cost_total_s"
STRONG_RUN, STRONG_SKIPPED, STRONG_TASK = "strong_evals_run", "strong_evals_skipped", "strong_eval_task_s"


def cost_table(metrics: dict[str, float]) -> pd.DataFrame:
    """Per phase logged in `metrics` (a study run's): its seconds and share of their sum."""
    rows = [(phase, metrics[key]) for phase, key in PHASES.items() if key in metrics]
    total = sum(seconds for _, seconds in rows)
    return pd.DataFrame([{"phase": phase, "seconds": round(seconds, 1),
                          "share": f"{seconds / total:.0%}" if total > 0 else ""} for phase, seconds in rows])


def describe_costs(metrics: dict[str, float]) -> str:
    """One line: `where the time went (312 s): start-up 18 s (6%), ...; strong evaluations: 3 run
    (95 s of tasks), 5 skipped as dominated`; empty where nothing was logged."""
    table = cost_table(metrics)
    if table.empty:
        return ""
    parts = ", ".join(f"{row.phase} {row.seconds:.0f} s ({row.share})" for row in table.itertuples())
    line = f"where the time went ({table['seconds'].sum():.0f} s): {parts}"
    if not math.isnan(metrics.get(STRONG_RUN, math.nan)):
        line += (f"; strong evaluations: {metrics[STRONG_RUN]:.0f} run ({metrics.get(STRONG_TASK, 0.0):.0f} s of "
                 f"tasks), {metrics.get(STRONG_SKIPPED, 0.0):.0f} skipped as dominated")
    return line
