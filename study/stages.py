"""The stages of a study. A stage is one Tune experiment in the study's folder: a name (its
trials' MLflow stage tag), the settings its trials share (derived from the spec once), its data,
a searcher that says which trials it owes and a scheduler that may stop them early. Every stage
is built, restored and run by the same `run_stage`; after a run, MLflow is reconciled with what
Tune saved, so a killed driver leaves no run in a wrong state.

To add a stage (the racing rounds after the confirmation, say): subclass `Stage` as
`ConfirmStage` does, with its `name`, `settings_for`, `folder`, `owed`, `searcher` and
`scheduler`, and call `run_stage` on it from `study.run`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import optuna
from mlflow.tracking import MlflowClient
from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher

from analysis.pareto import select_for_confirmation, study_trials
from analysis.records import CONFIRM, CONFIRM_ROBUST_METRIC_TAG, SEARCH
from study.final_eval import ACTIVE, FinalEvaluationHook, FinalEvaluations
from study.spec import StudySpec
from study.storage import Storage, StudyRecord
from study.tracking import TrialTracker
from study.tuner import ConfirmationPoints, make_scheduler, make_searcher, make_trainable, run_config
from trainables.core.data import DataBundle
from trainables.core.settings import RunSettings
from trainables.trial import TrialConfig

TRIAL_METRICS = ["train_loss", "lr", "epoch_time_s", "eval_time_s", "train_time_s", "compute_time_s", "gpu_seconds"]


@dataclass
class StudyContext:
    """What every stage of one study shares: the spec, where it is stored and recorded, and each
    trial's resources (decided once, against the cluster the study runs on)."""

    spec: StudySpec
    storage: Storage
    record: StudyRecord
    client: MlflowClient
    resources: dict[str, float]


@dataclass
class StageInputs:
    """What a stage's trials share, made before the study starts: the settings and the data."""

    settings: RunSettings
    data: DataBundle


@dataclass
class StageOutcome:
    """How a stage's run ended: trials it owes that did not finish, and trials that failed."""

    unfinished: int
    failed: int


class Stage:
    """One stage of a study; subclasses say what differs."""

    name: ClassVar[str]
    race_round = 0  # a racing confirm stage's round (0: not one)

    def __init__(self, study: StudyContext, inputs: StageInputs) -> None:
        self.study = study
        self.settings = inputs.settings
        self.data = inputs.data

    @staticmethod
    def settings_for(spec: StudySpec) -> RunSettings:
        """The settings every trial of this stage shares."""
        raise NotImplementedError

    @property
    def folder(self) -> str:
        """The stage's Tune experiment, a folder of the study's storage."""
        raise NotImplementedError

    @property
    def uri(self) -> str:
        return self.study.storage.study_uri(self.folder)

    def owed(self) -> int:
        """How many trials the stage runs in all."""
        raise NotImplementedError

    def searcher(self) -> Searcher:
        raise NotImplementedError

    def scheduler(self) -> TrialScheduler:
        raise NotImplementedError

    def tracker(self) -> TrialTracker:
        spec, record = self.study.spec, self.study.record
        return TrialTracker(record.tracking_uri, record.parent_run_id, self.settings.metric_names() + TRIAL_METRICS,
                            self.settings.train.epochs, spec.searched(), self.name, self.settings.train.seed,
                            self.race_round)

    def announce(self) -> bool:
        """Say what the stage is about to run; False where it has nothing to run."""
        return True

    def trainable(self) -> object:
        return make_trainable(self.settings, self.data, self.study.resources, self.name)

    def callbacks(self) -> list[tune.Callback]:
        """Tune callbacks besides the tracker (saved with the Tuner, so they come back on restore)."""
        return []

    def after(self, trials: list[Trial]) -> None:
        """What the stage does once all its trials have ended (`trials` as Tune saved them)."""

    def build(self, tracker: TrialTracker) -> tune.Tuner:
        """A new Tuner for the stage."""
        spec = self.study.spec
        return tune.Tuner(
            self.trainable(),
            tune_config=tune.TuneConfig(
                search_alg=self.searcher(),
                scheduler=self.scheduler(),
                num_samples=self.owed(),
                reuse_actors=True,  # trials of a study share resources: skip a process start per trial
            ),
            run_config=run_config(spec, self.study.storage.uri, self.folder, [tracker, *self.callbacks()]),
        )

    def restore(self) -> tune.Tuner:
        """The Tuner of the interrupted stage: unfinished and errored trials go on from their
        checkpoints; the searcher, scheduler and tracker come back from the saved state."""
        return tune.Tuner.restore(self.uri, trainable=self.trainable(), resume_errored=True)

    def saved_trials(self) -> list[Trial]:
        """The stage's trials as Tune last saved them."""
        return tune.ExperimentAnalysis(self.uri).trials


def run_stage(stage: Stage, fit: bool = True) -> StageOutcome:
    """Run (or resume) `stage` to its end, unless `fit` is off (then only reconcile what it
    recorded), and bring its MLflow runs in line with what Tune saved."""
    if fit and not stage.announce():
        return StageOutcome(0, 0)
    tracker = stage.tracker()
    if fit:
        tuner = stage.restore() if tune.Tuner.can_restore(stage.uri) else stage.build(tracker)
        tuner.fit()
    saved = stage.saved_trials()  # statuses as saved, before Tune's cleanup
    unfinished = tracker.reconcile(saved, stage.study.spec.tracking.wait_s) + stage.owed() - len(saved)
    if not unfinished:
        stage.after(saved)
    return StageOutcome(unfinished, sum(trial.status == Trial.ERROR for trial in saved))


class SearchStage(Stage):
    """Optuna (multi-objective) picks `search.num_samples` configurations; ASHA stops the poor
    ones on one metric. Optuna's study is kept in `optuna_db` where one is given. The strong
    evaluation (`final_eval`) runs beside the trials, not in them (study.final_eval)."""

    name = SEARCH

    def __init__(self, study: StudyContext, inputs: StageInputs, optuna_db: optuna.storages.BaseStorage | None) -> None:
        super().__init__(study, inputs)
        self.optuna_db = optuna_db
        self.final = FinalEvaluations(study, inputs.settings, inputs.data) if inputs.settings.final_eval else None
        if self.final is not None:
            ACTIVE[self.folder] = self.final

    def trainable(self) -> object:
        return make_trainable(replace(self.settings, final_eval=None), self.data, self.study.resources, self.name)

    def announce(self) -> bool:
        if self.final is not None:
            self.final.announce()
        return True

    def callbacks(self) -> list[tune.Callback]:
        return [FinalEvaluationHook(self.folder)] if self.final is not None else []

    def after(self, trials: list[Trial]) -> None:
        if self.final is not None:
            self.final.finish(trials)

    @staticmethod
    def settings_for(spec: StudySpec) -> RunSettings:
        return spec.settings()

    @property
    def folder(self) -> str:
        return self.study.record.run_name

    def owed(self) -> int:
        return self.study.spec.search.num_samples

    def searcher(self) -> Searcher:
        return make_searcher(self.study.spec, self.optuna_db, self.folder)

    def scheduler(self) -> TrialScheduler:
        return make_scheduler(self.study.spec)

    def trial_configs(self) -> dict[str, TrialConfig]:
        """Each search trial's configuration, by trial id."""
        return {trial.trial_id: TrialConfig.from_tune(trial.config, self.name) for trial in self.saved_trials()}


class PointsStage(Stage):
    """A stage that trains a fixed list of (configuration, seed) pairs, each to the end."""

    @property
    def points(self) -> list[TrialConfig]:
        raise NotImplementedError

    def owed(self) -> int:
        return len(self.points)

    def searcher(self) -> Searcher:
        points: list[dict[str, Any]] = [point.to_tune() for point in self.points]
        return ConcurrencyLimiter(ConfirmationPoints(points), max_concurrent=self.study.spec.search.max_concurrent)

    def scheduler(self) -> TrialScheduler:
        return FIFOScheduler()


class ConfirmStage(PointsStage):
    """The search front's chosen configurations (`confirm.top`), once per seed, each to the end.
    The (configuration, seed) pairs are chosen once, seed-major (every configuration's first seed
    before any second one), and saved in the study folder: a resumed stage goes on with the list
    it started."""

    name = CONFIRM
    FILE = "confirm.json"  # in the study folder: the pairs, each a trial config in Tune's form
    SUFFIX = "-confirm"  # the stage's Tune experiment: beside the search's, named after it

    def __init__(self, study: StudyContext, inputs: StageInputs, search: SearchStage) -> None:
        super().__init__(study, inputs)
        self.search = search
        self._points: list[TrialConfig] | None = None

    @staticmethod
    def settings_for(spec: StudySpec) -> RunSettings:
        return spec.confirm_settings()

    @property
    def folder(self) -> str:
        return self.study.record.run_name + self.SUFFIX

    @property
    def points(self) -> list[TrialConfig]:
        """The (configuration, seed) pairs the stage owes: as saved, else chosen now and saved."""
        if self._points is None:
            storage, run_name = self.study.storage, self.study.record.run_name
            if storage.exists(run_name, self.FILE):
                saved = json.loads(storage.read_text(run_name, self.FILE))
                self._points = [TrialConfig.from_tune(config, self.name) for config in saved]
            else:
                self._points = self.choose()
                storage.write_text(json.dumps([p.to_tune() for p in self._points], indent=1), run_name, self.FILE)
        return self._points

    def choose(self) -> list[TrialConfig]:
        spec = self.study.spec
        chosen = select_for_confirmation(study_trials(self.study.client, self.study.record.parent_run_id),
                                         spec.confirm.top, spec.confirm.per_method)
        configs = self.search.trial_configs()
        return [configs[trial_id].with_seed(seed, self.name)
                for seed in spec.confirm.seeds for trial_id in chosen["trial_id"]]

    def announce(self) -> bool:
        """Say what the stage will run, and tag the study run with the confirmed front's robust
        axis; False where the search front is empty and there is nothing to confirm."""
        if not self.points:
            print("confirm: the search front is empty, nothing to confirm", flush=True)
            return False
        final_eval = self.settings.final_eval
        if final_eval is not None and final_eval.primary_robust_metric is not None:
            self.study.client.set_tag(self.study.record.parent_run_id, CONFIRM_ROBUST_METRIC_TAG,
                                      final_eval.primary_robust_metric)
        seeds = len({point.seed for point in self.points})
        print(f"confirm: {len(self.points) // seeds} configuration(s) x {seeds} seed(s), "
              f"{self.settings.train.epochs} epochs on {len(self.data.train_y)} images", flush=True)
        return True


class RaceRound(PointsStage):
    """A round of a racing confirm stage that trains more seeds of some configurations (their
    runs are confirm runs, tagged with the round); its pairs are saved with the race's plan."""

    name = CONFIRM

    def __init__(self, study: StudyContext, inputs: StageInputs, number: int, points: list[TrialConfig]) -> None:
        super().__init__(study, inputs)
        self.race_round = number
        self._points = points

    @staticmethod
    def folder_of(run_name: str, number: int) -> str:
        """The Tune experiment of a study's race round `number`."""
        return f"{run_name}{ConfirmStage.SUFFIX}-r{number}"

    @property
    def folder(self) -> str:
        return self.folder_of(self.study.record.run_name, self.race_round)

    @property
    def points(self) -> list[TrialConfig]:
        return self._points
