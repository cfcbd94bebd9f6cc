"""The driver's clock of a study's phases (analysis.costs names them and shows them)."""

from __future__ import annotations

import time

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from analysis.costs import PHASES, STRONG_RUN, STRONG_SKIPPED, STRONG_TASK, TOTAL
from analysis.pareto import column
from analysis.records import SEARCH, trial_runs
from study.final_eval import Tally


class StudyClock:
    """Wall seconds per phase, each lap the time since the previous one."""

    def __init__(self, started: float) -> None:
        self.last = started
        self.seconds: dict[str, float] = {}
        self.tally: Tally | None = None

    def lap(self, phase: str) -> float:
        now = time.time()
        took, self.last = now - self.last, now
        self.seconds[phase] = self.seconds.get(phase, 0.0) + took
        return took

    def search(self, client: MlflowClient, parent_run_id: str, tally: Tally | None) -> None:
        """The search's lap, split into training and search evaluation by its trials' measured
        seconds of each, and the wait for its strong evaluations after it."""
        wall = self.lap("search") - (tally.waited if tally else 0.0)
        del self.seconds["search"]
        runs = trial_runs(client, parent_run_id)
        runs = runs[runs["stage"] == SEARCH]
        train = float(column(runs, "metrics.train_time_s").sum())
        evaluate = float(column(runs, "metrics.eval_time_s").sum())
        share = train / (train + evaluate) if train + evaluate > 0 else 1.0
        self.seconds["training"] = wall * share
        self.seconds["search evaluation"] = wall * (1 - share)
        if tally is not None:
            self.seconds["strong evaluation"] = tally.waited
            self.tally = tally

    def log(self, client: MlflowClient, parent_run_id: str) -> None:
        """The phases so far as `cost_*_s` metrics on the study run (and the strong evaluations' counts)."""
        values = {PHASES[phase]: seconds for phase, seconds in self.seconds.items()}
        values[TOTAL] = sum(self.seconds.values())
        if self.tally is not None:
            values |= {STRONG_RUN: self.tally.run, STRONG_SKIPPED: self.tally.skipped, STRONG_TASK: self.tally.seconds}
        now = int(time.time() * 1000)
        client.log_batch(parent_run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
