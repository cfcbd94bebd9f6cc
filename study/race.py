"""A racing confirm stage: after the confirm stage's first round, rounds of more examples or
more seeds until every place on the confirmed front is settled or the budget is spent.

Each round reads the confirm runs' per-example records from MLflow, judges them
(analysis.verdicts), and plans its actions (analysis.racing): evaluate the trained runs of the
configurations still racing on the next block of examples, from their checkpoints, as Ray
tasks; or train one more seed of a configuration, as a `RaceRound` stage (its own Tune
experiment), beside them. The plan is saved in the study folder (`race.json`) before it runs,
so a killed study resumes the round where it stood: the seeds' Tune experiment is restored and
only runs whose records lack the block are evaluated. Every action and its reason goes to
`analysis/race.csv` on the study run, and one line per round is printed.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import ray
from mlflow.tracking import MlflowClient
from ray import tune

from analysis.racing import MORE_EXAMPLES, MORE_SEEDS, Action, Costs, plan_round
from analysis.records import CONFIRM, trial_runs
from analysis.verdicts import confirm_records, judge, record_columns, run_records
from study.stages import ConfirmStage, RaceRound, StageInputs, StudyContext, run_stage
from study.tracking import log_latest
from trainables.core.evaluation import EXAMPLES, FINAL_EXAMPLES
from trainables.records import merge_records, records_frame
from trainables.trainable import evaluate_checkpoint
from trainables.trial import EVAL_TABLES, RECORDS_FILE, TrialConfig

RACE_FILE = "race.json"


@dataclass
class RoundPlan:
    """One round: its number, the examples its racing runs have after it, its actions, the
    configurations in open pairs (their runs get the new examples), whether it finished, and its
    wall seconds."""

    number: int
    examples: int
    actions: list[dict]
    racing: list[str]
    done: bool = False
    seconds: float = 0.0


@dataclass
class RaceState:
    """The race as saved in the study folder: its rounds, and the measured seconds per example
    of an evaluation (None before the first block)."""

    rounds: list[RoundPlan] = field(default_factory=list)
    seconds_per_example: float | None = None

    @classmethod
    def load(cls, study: StudyContext) -> RaceState:
        storage, run_name = study.storage, study.record.run_name
        if not storage.exists(run_name, RACE_FILE):
            return cls()
        saved = json.loads(storage.read_text(run_name, RACE_FILE))
        return cls([RoundPlan(**r) for r in saved["rounds"]], saved["seconds_per_example"])

    def save(self, study: StudyContext) -> None:
        study.storage.write_text(json.dumps(asdict(self), indent=1), study.record.run_name, RACE_FILE)


class Race:
    """The racing rounds of one study's confirm stage."""

    def __init__(self, study: StudyContext, confirm: ConfirmStage, inputs: StageInputs) -> None:
        self.study, self.confirm, self.inputs = study, confirm, inputs
        self.spec = study.spec.confirm
        self.judged = inputs.settings.final_eval or inputs.settings.eval
        self.final = inputs.settings.final_eval is not None
        self.columns = record_columns(self.final, self.judged.primary_robust_metric)
        self.configs = {point.config_id(): point for point in confirm.points}
        self.state = RaceState.load(study)

    @property
    def racing(self) -> bool:
        more_examples = (self.spec.max_examples or 0) > (self.judged.examples or 0)
        return self.spec.seed_limit > len(self.spec.seeds) or more_examples

    def examples(self) -> int:
        """The most examples a racing run has now (at first the judging evaluation's: all of its
        split where it sets none)."""
        done = [r.examples for r in self.state.rounds if r.done]
        return max(done) if done else self.judged.examples or len(self.inputs.data.split(self.judged.split)[1])

    def run(self) -> int:
        """Race to a settled front or the end of the budget; returns unfinished trials (a round
        interrupted), 0 when the race ended."""
        started = time.monotonic() - sum(r.seconds for r in self.state.rounds if r.done)
        while True:
            open_round = next((r for r in self.state.rounds if not r.done), None)
            if open_round is None:
                open_round = self.next_round(started)
                if open_round is None:
                    return 0
            round_started = time.monotonic()
            unfinished = self.run_round(open_round)
            if unfinished:
                return unfinished
            open_round.done, open_round.seconds = True, time.monotonic() - round_started
            self.state.save(self.study)
            self.log_actions()

    def racing_runs(self) -> pd.DataFrame:
        """The confirm stage's finished full-budget runs (a row each, with their metrics)."""
        runs = trial_runs(self.study.client, self.study.record.parent_run_id)
        done = runs[(runs["stage"] == CONFIRM) & (runs["status"] == "FINISHED") & (runs["budget"] == "full")]
        return done.reset_index(drop=True)

    def next_round(self, started: float) -> RoundPlan | None:
        """Judge the runs; plan and save the next round, or say why the race ends (None)."""
        runs = self.racing_runs()
        records = confirm_records(self.study.client, runs, self.columns)
        number = len(self.state.rounds) + 1
        verdicts = judge(records, self.columns, {}, self.spec.confidence, self.spec.delta) if records else None
        if verdicts is None:
            print("race: the confirm runs have no shared per-example records; the race stops", flush=True)
            return None
        settled = int(verdicts.table["settled"].sum())
        elapsed = time.monotonic() - started
        trials_used = sum(a["kind"] == MORE_SEEDS for r in self.state.rounds for a in r.actions)
        budget = self.spec.budget
        ends = ("the front is settled" if settled == len(verdicts.table)
                else "the seconds of the budget are spent" if budget.seconds is not None and elapsed >= budget.seconds
                else "")
        if not ends:
            left = None if budget.seconds is None else budget.seconds - elapsed
            actions = plan_round(verdicts, self.spec.seed_limit, self.spec.max_examples or self.examples(),
                                 self.costs(runs), None if budget.trials is None else budget.trials - trials_used,
                                 left, self.study.spec.search.max_concurrent)
            ends = "" if actions else "no action narrows the open intervals within max_seeds, max_examples, budget"
        print(f"race: after round {number - 1}: {settled} of {len(verdicts.table)} places settled "
              f"({examples_range(verdicts.table['examples'])} examples, {elapsed:.0f} s)"
              + (f"; the race ends: {ends}" if ends else ""),
              flush=True)
        if ends:
            return None
        block = next((a for a in actions if a.kind == MORE_EXAMPLES), None)
        plan = RoundPlan(number, block.value if block else self.examples(), [asdict(a) for a in actions],
                         block.target.split(",") if block else [])
        for action in actions:
            print(f"race: round {number}: {describe(action)}: {action.reason}", flush=True)
        self.state.rounds.append(plan)
        self.state.save(self.study)
        return plan

    def costs(self, runs: pd.DataFrame) -> Costs:
        """Seconds per new seed (the confirm runs' mean compute time) and per example evaluated
        (measured in earlier blocks, else the runs' last evaluation time over its examples)."""
        per_trial = float(runs.get("metrics.compute_time_s", pd.Series([1.0])).mean())
        per_example = self.state.seconds_per_example
        if per_example is None:
            per_example = float(runs.get("metrics.eval_time_s", pd.Series([1.0])).mean()) / self.examples()
        return Costs(per_trial, per_example)

    def run_round(self, plan: RoundPlan) -> int:
        """A round's actions: its new seeds as a Tune experiment and, beside them, Ray tasks that
        evaluate the earlier runs on the new block of examples; returns unfinished trials."""
        actions = [Action(**a) for a in plan.actions]
        pending = self.submit_block(plan.examples, plan.racing)
        points = [self.new_seed(a) for a in actions if a.kind == MORE_SEEDS]
        unfinished = 0
        if points:
            settings = self.inputs.settings
            judged = replace(self.judged, examples=plan.examples)
            settings = replace(settings, final_eval=judged) if self.final else replace(settings, eval=judged)
            inputs = StageInputs(settings, self.inputs.data)
            unfinished = run_stage(RaceRound(self.study, inputs, plan.number, points)).unfinished
        self.collect(pending)
        return unfinished

    def new_seed(self, action: Action) -> TrialConfig:
        """Configuration `action.target`'s seed number `action.value`: the seeds after confirm.seeds."""
        seeds = self.spec.seeds
        return self.configs[action.target].with_seed(max(seeds) + action.value - len(seeds), CONFIRM)

    def submit_block(self, stop: int, racing: list[str]) -> list[tuple[str, ray.ObjectRef]]:
        """Ray tasks evaluating each run of the racing configurations on its examples from where
        its records stop (a prefix of the evaluation order) up to `stop`."""
        runs = self.racing_runs()
        runs = runs[runs["config_id"].isin(racing)]
        checkpoints = self.checkpoints()
        task = ray.remote(evaluate_checkpoint).options(num_cpus=self.study.resources["cpu"],
                                                       num_gpus=self.study.resources["gpu"])
        data = ray.put(self.inputs.data)
        pending = []
        with tempfile.TemporaryDirectory() as folder:
            for run in runs.itertuples():
                frame = run_records_frame(self.study.client, run.run_id, folder)
                column = self.columns["robust"]
                start = int(frame[column].notna().sum()) if frame is not None and column in frame else 0
                if start >= stop:
                    continue
                config, checkpoint = checkpoints[run.trial_id]
                pending.append((run.run_id, task.remote(config, self.inputs.settings, data, CONFIRM, checkpoint,
                                                        start, stop)))
        return pending

    def checkpoints(self) -> dict[str, tuple[dict, tune.Checkpoint]]:
        """Every confirm trial's config and last checkpoint, by trial id, over the confirm stage's
        Tune experiments (its first round and the race's rounds)."""
        storage, run_name = self.study.storage, self.study.record.run_name
        folders = [self.confirm.folder] + [RaceRound.folder_of(run_name, r.number) for r in self.state.rounds]
        found = {}
        for folder in folders:
            uri = storage.study_uri(folder)
            if tune.Tuner.can_restore(uri):
                found.update({t.trial_id: (t.config, t.checkpoint) for t in tune.ExperimentAnalysis(uri).trials})
        return found

    def collect(self, pending: list[tuple[str, ray.ObjectRef]]) -> None:
        """Join each finished block's records into its run's, and log the run's judging metrics
        as the means over all its examples."""
        if not pending:
            return
        client, seconds, examples = self.study.client, 0.0, 0
        for run_id, ref in pending:
            result, took = ray.get(ref)
            new = records_frame(result.tables)
            with tempfile.TemporaryDirectory() as folder:
                kept = run_records_frame(client, run_id, folder)
                merged = merge_records(kept, new) if kept is not None else new
                path = Path(folder) / "new" / RECORDS_FILE
                path.parent.mkdir()
                merged.to_parquet(path, index=False)
                client.log_artifact(run_id, str(path), EVAL_TABLES)
            self.log_means(run_id, merged)
            name = FINAL_EXAMPLES if self.final else EXAMPLES
            seconds, examples = seconds + took, examples + len(result.tables[name]["index"])
        self.state.seconds_per_example = seconds / max(examples, 1)

    def log_means(self, run_id: str, records: pd.DataFrame) -> None:
        """The run's judging metrics (and its robust_acc) as its records' means, at its last epoch."""
        prefix = "final_" if self.final else ""
        columns = [c for c in records.columns if c.startswith(prefix) and c.endswith("_acc")
                   and (self.final or not c.startswith("final_"))]
        values = {c: float(records[c].dropna().astype(float).mean()) for c in columns}
        values[f"{prefix}robust_acc"] = values[self.columns["robust"]]
        log_latest(self.study.client, run_id, values)

    def log_actions(self) -> None:
        """Every action so far with its round and reason, as analysis/race.csv on the study run."""
        rows = [{"round": r.number, "examples_after": r.examples, "round_seconds": r.seconds, **a}
                for r in self.state.rounds for a in r.actions]
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "race.csv"
            pd.DataFrame(rows).to_csv(path, index=False)
            self.study.client.log_artifact(self.study.record.parent_run_id, str(path), "analysis")


def run_records_frame(client: MlflowClient, run_id: str, folder: str) -> pd.DataFrame | None:
    return run_records(client, run_id, f"{folder}/{run_id}")


def examples_range(examples: pd.Series) -> str:
    """`200`, or `100-200` where configurations that left the race kept fewer."""
    low, high = int(examples.min()), int(examples.max())
    return str(high) if low == high else f"{low}-{high}"


def describe(action: Action) -> str:
    """An action as the round's line shows it."""
    if action.kind == MORE_EXAMPLES:
        return f"the runs of {action.target} on {action.value} examples (~{action.seconds:.0f} s)"
    return f"seed {action.value} of {action.target} (~{action.seconds:.0f} s)"
