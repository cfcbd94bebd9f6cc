"""The Ray Tune parts the stages of a study are built from (`study.stages`): the searchers
(Optuna over the methods' space; a fixed list of trials), ASHA, the trainable with its
resources, the run config (storage, fault tolerance, progress table) and the resource checks."""

from __future__ import annotations

import copy
import json
import sys
import time
from typing import Any

import optuna
import ray
from ray import tune
from ray.autoscaler.sdk import request_resources
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from analysis.names import short_name
from study.final_eval import ACTIVE
from study.space import MethodSearchSpace, first_points, space_key
from study.spec import StudySpec
from trainables.core.data import DataBundle
from trainables.core.registry import ConfigError
from trainables.core.settings import RunSettings
from trainables.phases import read_board
from trainables.trainable import train_trial


def trial_resources(spec: StudySpec) -> dict[str, float]:
    """The spec's per-trial resources; a GPU share only where the cluster has GPUs."""
    gpus = ray.cluster_resources().get("GPU", 0)
    gpu = spec.resources.gpu if gpus > 0 else 0.0
    if spec.resources.gpu > 0 and gpus == 0:
        print(f"resources.gpu: {spec.resources.gpu} asked for, but the cluster has no GPU: "
              "trials run on the CPU", flush=True)
    return {"cpu": spec.resources.cpu, "gpu": gpu}


def largest_node() -> tuple[float, float]:
    """(CPUs, GPUs) of the live node with the most of each."""
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    return max(node.get("CPU", 0.0) for node in nodes), max(node.get("GPU", 0.0) for node in nodes)


def check_node_resources(spec: StudySpec, poll_s: float = 2.0) -> None:
    """Refuse a per-trial request that no node of the cluster can hold (a trial runs on one
    node), before anything is recorded: otherwise Tune waits for such a node forever. With
    `resources.autoscaling`, ask the autoscaler for such a node and wait up to `wait_s` first."""
    resources = spec.resources
    cpus, gpus = largest_node()
    if resources.autoscaling and not resources.fits(cpus, gpus):
        request_resources(bundles=[{"CPU": resources.cpu, **({"GPU": resources.gpu} if resources.gpu else {})}])
        print(f"warning: resources: no node holds {resources.cpu:g} CPU and {resources.gpu:g} GPU per trial yet "
              f"(the largest has {cpus:g} and {gpus:g}); asked the autoscaler for one, waiting up to "
              f"resources.wait_s = {resources.wait_s:g} s", file=sys.stderr, flush=True)
        deadline = time.monotonic() + resources.wait_s
        while not resources.fits(cpus, gpus) and time.monotonic() < deadline:
            time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
            cpus, gpus = largest_node()
    if resources.autoscaling and not resources.fits(cpus, gpus):
        needs = "resources.cpu" if resources.cpu > cpus else "resources.gpu"
        raise ConfigError(f"{needs}: after resources.wait_s = {resources.wait_s:g} s no node holds a trial "
                          f"({resources.cpu:g} CPU, {resources.gpu:g} GPU); the largest has {cpus:g} CPUs and "
                          f"{gpus:g} GPUs; allowed: a request the autoscaler's node types hold, or a longer wait_s")
    resources.require_within(cpus, gpus, "the largest node")


def make_scheduler(spec: StudySpec) -> TrialScheduler:
    if spec.scheduler.kind == "fifo":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="training_iteration",
        metric=spec.scheduler.metric,
        mode=spec.scheduler.mode,
        max_t=spec.train.epochs,
        grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
    )


def make_searcher(spec: StudySpec, optuna_db: optuna.storages.BaseStorage | None,
                  study_name: str) -> ConcurrencyLimiter:
    """Optuna's TPE over the methods' space, its study kept in `optuna_db` (under `study_name`,
    for optuna-dashboard and for a resume) where one is given."""
    searcher = OptunaSearch(
        space=MethodSearchSpace(spec.methods.methods, spec.methods.registered),
        points_to_evaluate=first_points(spec.methods.methods, spec.search.first) or None,
        metric=[o.metric for o in spec.objectives],
        mode=[o.mode for o in spec.objectives],
        sampler=optuna.samplers.TPESampler(seed=spec.search.seed),
        storage=optuna_db,
        study_name=study_name,
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.search.max_concurrent)


PHASE = "phase"


class StudyReporter(tune.CLIReporter):
    """Tune's table with a phase column: what each trial is doing (training, evaluating with its
    attack and the points left, queued for its final evaluation, in it, skipped), read from the
    trials' phase board and the search's final evaluations (by the stage's folder: the reporter
    is saved with the Tuner)."""

    def __init__(self, folder: str, **options: Any) -> None:
        super().__init__(**options)
        self.folder = folder

    def report(self, trials: list[Trial], done: bool, *sys_info: dict) -> None:
        board, final = read_board(), ACTIVE.get(self.folder)
        for trial in trials:
            live = board.get(trial.trial_id)
            if trial.status == Trial.RUNNING:
                phase = live or "training"
            elif trial.status == Trial.TERMINATED:
                phase = final.phase(trial.trial_id) if final is not None else None
                if phase == "final eval" and live and live.startswith(phase):
                    phase = live
                phase = phase or "done"
            else:
                phase = trial.status.lower()
            trial.last_result[PHASE] = phase
        super().report(trials, done, *sys_info)


def progress_reporter(spec: StudySpec, folder: str) -> StudyReporter:
    """Tune's progress table: trial, status, method, the searched hyperparameters (short names),
    epoch, clean and robust accuracy, time and phase."""
    searched = [(label, name) for label, names in spec.searched().items() for name in names]
    shorts = [short_name(name) for _, name in searched]
    parameters = {"method": "method"} | {
        space_key(label, name): short if shorts.count(short) == 1 else f"{label}.{short}"
        for (label, name), short in zip(searched, shorts, strict=True)}
    return StudyReporter(
        folder,
        parameter_columns=parameters,
        metric_columns={"epoch": "epoch", "clean_acc": "clean_acc", "robust_acc": "robust_acc",
                        "time_total_s": "time (s)", PHASE: PHASE},
        max_report_frequency=30,
        max_column_length=48,  # the phase: an evaluation's attack and points left
        print_intermediate_tables=True,  # its default depends on the verbosity when it is built
        sort_by_metric=False,
    )


class ConfirmationPoints(Searcher):
    """Suggests the given trial configs in order, then nothing: the confirm stage's fixed list of
    (configuration, seed) pairs, saved with the experiment so a resume neither repeats nor skips."""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        super().__init__()
        self.points = points
        self.suggested = 0

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        if self.suggested == len(self.points):
            return Searcher.FINISHED
        self.suggested += 1
        return copy.deepcopy(self.points[self.suggested - 1])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """Nothing to learn: the list is fixed."""

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump({"points": self.points, "suggested": self.suggested}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            state = json.load(f)
        self.points, self.suggested = state["points"], state["suggested"]


def make_trainable(settings: RunSettings, data: DataBundle, resources: dict[str, float], stage: str) -> object:
    """The trial function of a stage with its resources; `data` goes into Ray's object store once
    and every trial on a node maps that one copy."""
    return tune.with_resources(tune.with_parameters(train_trial, settings=settings, data=data, stage=stage),
                               resources)


def run_config(spec: StudySpec, storage_uri: str, name: str, callbacks: list[tune.Callback]) -> tune.RunConfig:
    return tune.RunConfig(
        name=name,
        storage_path=storage_uri,
        callbacks=callbacks,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        failure_config=tune.FailureConfig(max_failures=spec.faults.max_failures),
        progress_reporter=progress_reporter(spec, name),
        verbose=1,
    )
