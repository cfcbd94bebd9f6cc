"""The search's strong evaluation (`final_eval`), beside the search and only where it can change
the front.

Each search trial that ran the full budget ends after its last epoch's evaluation; its strong
evaluation is then a Ray task from the trial's checkpoint (the trial's CPU / GPU share), so the
trial's slot goes back to the search. Before a task starts, the rule of dominance decides
whether it can matter: every example the search's attack broke is a verified adversarial
example, which the strong evaluation counts as broken (it is not attacked again), so the strong
robust accuracy is at most the search's on the same examples. A trial whose (clean, that upper
bound) point another trial's (clean, strong robust) point dominates cannot reach the strong
front, nor, where the confirm stage takes each method's best, be its method's best: it is
skipped and tagged `robust_study.final_eval = skipped: dominated by RUN_ID`. Candidates go in the
order of their bound (the likeliest front points first: they rule most others out), one whose
bound point a running evaluation's dominates waits for that result, and a running evaluation
that a new result rules out is stopped.
`python -m study.evaluate --run-id RUN --eval final` evaluates a skipped trial all the same.

A trial's state is its run's tag (`done`, `skipped: ...`), so a study killed in the middle
resumes with the evaluations it still owes. The rule needs the two evaluations to judge the
same examples; where they do not, every full-budget trial is evaluated. Results and tags reach
MLflow through the study's tracking writer (study.writer), as the trials' reports do, so the
search's loop never waits on the store; the search's end waits for them.
"""

from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import ray
import torch
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial

from analysis.records import (
    EVAL_WARNING_TAG,
    FINAL_EVAL_DONE,
    FINAL_EVAL_SKIPPED,
    FINAL_EVAL_TAG,
    METHOD_TAG,
    SEARCH,
    TRIAL_TAG,
    child_runs,
)
from analysis.verdicts import means_dominate, run_records
from study.tracking import MAX_PARAM_LENGTH, TrackingUnavailable, log_latest, log_tables, trial_run_key
from study.writer import TrackingWriter, writer_for
from trainables.core.data import DataBundle
from trainables.core.evaluation import metric_warnings
from trainables.core.settings import RunSettings, same_examples
from trainables.records import known_radii
from trainables.trainable import evaluate_checkpoint
from trainables.trial import EVAL_TABLES, RECORDS_FILE, TrialConfig

if TYPE_CHECKING:
    from study.stages import StudyContext

ACTIVE: dict[str, FinalEvaluations] = {}  # by study folder: what the Tune callback of a (restored) search drives


@dataclass
class Candidate:
    """A full-budget search trial owed its strong evaluation: its run, method, Tune config and
    checkpoint, its clean accuracy, the upper bound of its strong robust accuracy (nan where
    there is none) and the radii its search evaluation broke its examples within."""

    trial_id: str
    run_id: str
    method: str
    config: dict[str, Any]
    checkpoint: tune.Checkpoint
    clean: float
    bound: float
    known: dict[str, torch.Tensor]
    search_metrics: dict[str, float]


@dataclass
class Point:
    """A strong evaluation's result on the front's axes."""

    run_id: str
    method: str
    clean: float
    robust: float


@dataclass
class Tally:
    """What the search's strong evaluations cost: how many ran (and their summed seconds), how
    many were skipped, and the wall seconds the study waited for them after the search (a failed
    one is printed and tagged `failed: ...`; a resumed study tries it again)."""

    run: int = 0
    skipped: int = 0
    seconds: float = 0.0
    waited: float = 0.0


class FinalEvaluations:
    """The strong evaluations one search stage owes, queued, skipped by dominance, or run as Ray
    tasks (at most `search.max_concurrent` at once)."""

    def __init__(self, study: StudyContext, settings: RunSettings, data: DataBundle) -> None:
        self.study, self.settings, self.data = study, settings, data
        self.judged = settings.final_eval
        metric = self.judged.primary_robust_metric
        self.ball = self.judged.ball(metric) if metric and same_examples(settings.eval, self.judged) else None
        self.per_method = study.spec.confirm is not None and study.spec.confirm.per_method
        self.slots = study.spec.search.max_concurrent
        self.queue: dict[str, Candidate] = {}
        self.running: dict[ray.ObjectRef, Candidate] = {}
        self.settled: set[str] = set()  # trial ids evaluated or skipped
        self.skipped: set[str] = set()
        self.unrecorded: dict[str, Trial] = {}  # finished trials whose runs the tracking writer has yet to make
        self.points: list[Point] = []
        self.tally = Tally()
        self._data_ref: ray.ObjectRef | None = None
        self.load_settled()

    @property
    def client(self) -> MlflowClient:
        return self.study.client

    def announce(self) -> None:
        rule = ("only where it can change the front" if self.ball is not None else
                "for every full-budget trial (final_eval judges other examples or measures no norm ball, so the "
                "search's attack bounds nothing)")
        print(f"final evaluation: {', '.join(i.kind for i in self.judged.items)} beside the search, {rule}",
              flush=True)

    def load_settled(self) -> None:
        """The search runs settled by an earlier driver: their points, and which were skipped."""
        for run in child_runs(self.client, self.study.record.parent_run_id, stage=SEARCH):
            state = run.data.tags.get(FINAL_EVAL_TAG, "")
            if not state and "final_clean_acc" in run.data.metrics:  # evaluated inside its trial (before 0.3)
                state = FINAL_EVAL_DONE
            if state == FINAL_EVAL_DONE:
                metrics = run.data.metrics
                self.points.append(Point(run.info.run_id, run.data.tags.get(METHOD_TAG, ""),
                                         metrics["final_clean_acc"], metrics.get("final_robust_acc", math.nan)))
            if state == FINAL_EVAL_DONE or state.startswith(FINAL_EVAL_SKIPPED):
                self.settled.add(run.data.tags[TRIAL_TAG])
            if state.startswith(FINAL_EVAL_SKIPPED):
                self.skipped.add(run.data.tags[TRIAL_TAG])

    def add(self, trial: Trial) -> None:
        """Queue a finished full-budget trial once the stage's tracker has made its run (until
        then it waits in `unrecorded`, tried again at every step)."""
        if trial.trial_id in self.settled or trial.trial_id in self.queue or trial.checkpoint is None:
            return
        if trial.last_result.get("epoch") != self.settings.train.epochs:
            return
        if any(c.trial_id == trial.trial_id for c in self.running.values()):
            return
        run_id = self.writer.runs.get(trial_run_key(self.study.record.parent_run_id, SEARCH, 0, trial.trial_id))
        if run_id is None:  # its run is still in the writer's queue (MLflow slow or away): queued later
            self.unrecorded[trial.trial_id] = trial
            return
        self.unrecorded.pop(trial.trial_id, None)
        with trial.checkpoint.as_directory() as folder:
            path = Path(folder) / EVAL_TABLES / RECORDS_FILE
            records = pd.read_parquet(path) if path.is_file() else None
        split_size = len(self.data.split(self.judged.split)[1])
        known = known_radii(records, self.settings.eval, split_size) if records is not None else {}
        clean = torch.tensor(records["clean_acc"].astype(bool).to_numpy()) if records is not None else torch.ones(0)
        bound = math.nan
        if self.ball is not None and records is not None:
            norm, eps = self.ball
            radius = known.get(norm, torch.full((split_size,), math.inf))[torch.tensor(records["index"].to_numpy())]
            bound = float((clean & (radius > eps)).double().mean())
        metrics = {k: v for k, v in trial.last_result.items() if isinstance(v, float)}
        method = TrialConfig.from_tune(trial.config, SEARCH).label
        self.queue[trial.trial_id] = Candidate(trial.trial_id, run_id, method, trial.config, trial.checkpoint,
                                               float(clean.double().mean()), bound, known, metrics)

    def dominated_by(self, candidate: Candidate) -> str | None:
        """The run whose strong point dominates the candidate's bound, where its strong evaluation
        can change neither the front nor its method's best; else None."""
        if math.isnan(candidate.bound):
            return None
        if self.per_method:
            own = [p for p in self.points if p.method == candidate.method]
            best = max(own, key=lambda p: (p.robust, p.clean), default=None)
            if best is None or (candidate.bound, candidate.clean) > (best.robust, best.clean):
                return None
        bound = {"clean": candidate.clean, "robust": candidate.bound}
        return next((p.run_id for p in self.points if means_dominate({"clean": p.clean, "robust": p.robust}, bound)),
                    None)

    def pump(self, block: bool = False) -> None:
        """Collect finished evaluations, skip (or stop) what is now dominated, and start the next ones."""
        for trial in list(self.unrecorded.values()):
            self.add(trial)
        if self.running:
            ready, _ = ray.wait(list(self.running), num_returns=1, timeout=None if block else 0)
            for ref in ready:
                self.collect(ref, self.running.pop(ref))
            for ref, candidate in list(self.running.items()):
                winner = self.dominated_by(candidate)
                if winner is not None:  # its result can no longer matter: its slot goes to the next
                    ray.cancel(ref, force=True)
                    del self.running[ref]
                    self.skip(candidate, winner)
        for candidate in sorted(self.queue.values(), key=lambda c: (-c.bound if not math.isnan(c.bound) else -2,
                                                                    -c.clean)):
            if len(self.running) >= self.slots:
                break
            winner = self.dominated_by(candidate)
            if winner is not None:
                del self.queue[candidate.trial_id]
                self.skip(candidate, winner)
            elif not any(bound_dominates(other, candidate) for other in self.running.values()):
                del self.queue[candidate.trial_id]
                self.running[self.submit(candidate)] = candidate

    @property
    def writer(self) -> TrackingWriter:
        return writer_for(self.study.record.tracking_uri)

    def tag(self, run_id: str, key: str, value: str) -> None:
        self.writer.call(lambda client: client.set_tag(run_id, key, value))

    def skip(self, candidate: Candidate, winner: str) -> None:
        self.tag(candidate.run_id, FINAL_EVAL_TAG, f"{FINAL_EVAL_SKIPPED}: dominated by {winner}")
        self.settled.add(candidate.trial_id)
        self.skipped.add(candidate.trial_id)
        self.tally.skipped += 1

    def submit(self, candidate: Candidate) -> ray.ObjectRef:
        if self._data_ref is None:
            self._data_ref = ray.put(self.data)
        resources = self.study.resources
        task = ray.remote(evaluate_checkpoint).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
        return task.remote(candidate.config, self.settings, self._data_ref, SEARCH, candidate.checkpoint, 0, None,
                           candidate.known, candidate.trial_id)

    def phase(self, trial_id: str) -> str | None:
        """What the strong evaluation of a finished trial is doing, for the progress table (None:
        nothing to say, or the evaluation's own progress on the phase board)."""
        if trial_id in self.queue:
            return "queued for final eval"
        if trial_id in self.skipped:
            return "final eval skipped: dominated"
        if any(c.trial_id == trial_id for c in self.running.values()):
            return "final eval"
        return None

    def collect(self, ref: ray.ObjectRef, candidate: Candidate) -> None:
        """Log a finished evaluation to the trial's run: its records joined into the run's, its
        other tables, `final_*` metrics, warnings, and the tag that settles it."""
        try:
            result, seconds = ray.get(ref)
        except ray.exceptions.RayTaskError as err:
            message = str(err).strip().splitlines()[-1][:MAX_PARAM_LENGTH]
            self.tag(candidate.run_id, FINAL_EVAL_TAG, f"failed: {message}")
            print(f"final evaluation of run {candidate.run_id} failed: {message}", flush=True)
            return
        metrics = {f"final_{k}": v for k, v in result.metrics.items()} | {"final_eval_time_s": seconds}
        messages = result.warnings + [w for w in metric_warnings({**candidate.search_metrics, **result.metrics})
                                      if w not in result.warnings]
        self.writer.call(partial(record_result, run_id=candidate.run_id, tables=result.tables, metrics=metrics,
                                 warnings=messages))
        self.points.append(Point(candidate.run_id, candidate.method, result.metrics["clean_acc"],
                                 result.metrics.get("robust_acc", math.nan)))
        self.settled.add(candidate.trial_id)
        self.tally.run += 1
        self.tally.seconds += seconds

    def finish(self, trials: list[Trial]) -> None:
        """After the search: queue every full-budget trial still owed (also those a killed driver
        finished), and wait for the evaluations to end."""
        started = time.monotonic()
        for trial in trials:
            if trial.status == Trial.TERMINATED:
                self.add(trial)
        while self.queue or self.running:
            self.pump(block=bool(self.running))
        wait_s = self.study.spec.tracking.wait_s
        if not self.writer.flush(wait_s):
            raise TrackingUnavailable(self.study.record.tracking_uri, wait_s)
        self.tally.waited += time.monotonic() - started
        if self.tally.run or self.tally.skipped:
            print(f"final evaluation: {self.tally.run} run ({self.tally.seconds:.0f} s), {self.tally.skipped} "
                  "skipped as dominated", flush=True)


def record_result(client: MlflowClient, run_id: str, tables: dict, metrics: dict[str, float],
                  warnings: list[str]) -> None:
    """A strong evaluation's result on its trial's run: its records joined into the run's, its
    other tables, the `final_*` metrics, its warnings, and last the tag that settles it (a write
    the store dropped half-way is made again whole: each part overwrites or joins the same)."""
    with tempfile.TemporaryDirectory() as folder:
        log_tables(client, run_id, tables, run_records(client, run_id, folder))
    log_latest(client, run_id, metrics)
    if warnings:
        client.set_tag(run_id, EVAL_WARNING_TAG, "; ".join(warnings)[:MAX_PARAM_LENGTH])
    client.set_tag(run_id, FINAL_EVAL_TAG, FINAL_EVAL_DONE)


def bound_dominates(first: Candidate, second: Candidate) -> bool:
    """Does `first`'s (clean, bound) point dominate `second`'s? Then `first`'s strong result may
    rule `second` out, and `second` waits for it."""
    if math.isnan(first.bound) or math.isnan(second.bound):
        return False
    return means_dominate({"clean": first.clean, "robust": first.bound},
                          {"clean": second.clean, "robust": second.bound})


class FinalEvaluationHook(tune.Callback):
    """The search Tuner's callback: queues each trial as it completes and keeps the evaluations
    moving. It holds only the stage's folder (it is saved with the Tuner, and a restored search
    finds the live queue by that name)."""

    def __init__(self, folder: str) -> None:
        self.folder = folder

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        if self.folder in ACTIVE:
            ACTIVE[self.folder].add(trial)
            ACTIVE[self.folder].pump()

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        if self.folder in ACTIVE:
            ACTIVE[self.folder].pump()
