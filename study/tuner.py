"""The Ray Tune Tuner of a study: Optuna (multi-objective) picks configurations, ASHA stops the
poor ones on one metric, each trial gets its resources, and every trial is tracked in MLflow."""

from __future__ import annotations

import optuna
import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from study.space import MethodSearchSpace, first_points
from study.spec import StudySpec
from trainables.core.data import DataBundle
from trainables.trainable import train_trial


def trial_resources(spec: StudySpec) -> dict[str, float]:
    """The spec's per-trial resources; a GPU share only where the cluster has GPUs."""
    gpus = ray.cluster_resources().get("GPU", 0)
    gpu = spec.resources.gpu if gpus > 0 else 0.0
    if spec.resources.gpu > 0 and gpus == 0:
        print(f"resources.gpu: {spec.resources.gpu} asked for, but the cluster has no GPU: "
              "trials run on the CPU", flush=True)
    return {"cpu": spec.resources.cpu, "gpu": gpu}


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


def make_searcher(spec: StudySpec) -> ConcurrencyLimiter:
    searcher = OptunaSearch(
        space=MethodSearchSpace(spec.methods.methods, spec.methods.registered),
        points_to_evaluate=first_points(spec.methods.methods, spec.search.first) or None,
        metric=[o.metric for o in spec.objectives],
        mode=[o.mode for o in spec.objectives],
        sampler=optuna.samplers.TPESampler(seed=spec.search.seed),
    )
    return ConcurrencyLimiter(searcher, max_concurrent=spec.search.max_concurrent)


def make_trainable(spec: StudySpec, data: DataBundle) -> object:
    """The trial function with its resources; `data` goes into Ray's object store once and every
    trial on a node maps that one copy."""
    return tune.with_resources(
        tune.with_parameters(train_trial, settings=spec.settings(), data=data),
        trial_resources(spec),
    )


def build_tuner(
    spec: StudySpec, data: DataBundle, storage_uri: str, run_name: str, callbacks: list[tune.Callback]
) -> tune.Tuner:
    """A new Tuner over `spec`, writing results and checkpoints to `storage_uri/run_name`."""
    return tune.Tuner(
        make_trainable(spec, data),
        tune_config=tune.TuneConfig(
            search_alg=make_searcher(spec),
            scheduler=make_scheduler(spec),
            num_samples=spec.search.num_samples,
            reuse_actors=True,  # trials of a study share resources: skip a process start per trial
        ),
        run_config=tune.RunConfig(
            name=run_name,
            storage_path=storage_uri,
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=spec.faults.max_failures),
            verbose=1,
        ),
    )


def restore_tuner(spec: StudySpec, data: DataBundle, study_uri: str) -> tune.Tuner:
    """The Tuner of an interrupted study: unfinished and errored trials go on from their
    checkpoints; the searcher, scheduler and callbacks come back from the saved state."""
    return tune.Tuner.restore(study_uri, trainable=make_trainable(spec, data), resume_errored=True)
