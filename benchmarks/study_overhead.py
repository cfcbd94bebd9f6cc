"""The study machinery's overhead on one machine, and where the time goes.

For 1, 2 and 4 concurrent trials: the wall time of a study of N identical trials (Ray, Optuna,
MLflow, checkpoints included) as a ratio to the sum of the same trials' times run bare
(`core.fit` in this process, one after another, evaluation included; measured before and after
the studies, and their mean taken, since a shared machine's speed drifts), and the time from launch
to the end of the first trial's first epoch. Then, per concurrency, where the study's wall time went:
start-up until the study's MLflow run exists (imports, data, a local Ray, the MLflow database),
from there to the first trial's start of training (Tune, the trial's process and imports), the
trials' training and evaluation (summed over trials, from their reports), the analysis and report
after Tune ends, and the rest (Tune's loop, checkpoints, MLflow writes, waiting); and
evaluation's share of the trials' compute; and the fixed cost against the part that grows with
the work, hence how much bare work a study needs before its wall time is within 1.10x. In the
same run, `startup_floor.py`'s parts, and its N trial processes started at once (as Tune starts
N concurrent trials, sharing the cores): launch to the first training step is judged against the
floor at that concurrency + 2 s, and the later trials of a slot (Tune reuses the slot's
process) are timed from their start to their first training step apart from the first.

    python benchmarks/study_overhead.py [--trials 4] [--epochs 2] [--subset 10000] [--repeats 3]

Targets: launch -> first training step <= the floor at its concurrency + 2 s; wall / bare <= 1.10 at 1, 2 and 4
concurrent trials once the bare work is at least 300 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parent))

from arguments import parse_checked  # noqa: E402  (benchmarks/arguments.py)
from startup_floor import floor_seconds, measure_concurrent_trials, measure_parts, print_concurrent, print_parts  # noqa: E402

from study.spec import load_spec
from trainables.core.data import load_data
from trainables.core.methods import build_method
from trainables.core.train import fit


def spec_for(args: argparse.Namespace) -> dict:
    return {
        "name": "overhead",
        "data": {"dataset": "fashion_mnist", "subset": args.subset, "val": 0},
        "model": {"name": "cw_cnn", "widths": "mnist"},
        "train": {"epochs": args.epochs, "batch_size": 128, "optimizer": "adam", "lr": 1e-3},
        "eval": {"examples": 200, "items": [{"kind": "attack", "eps": [1.0], "steps": 5}]},
        "methods": {"clean": {"weight_decay": 0.0}},
        "scheduler": {"kind": "fifo"},
        "search": {"num_samples": args.trials, "max_concurrent": 1},
        "resources": {"cpu": 1, "gpu": 0},
    }


def bare_seconds(spec_path: Path, trials: int) -> float:
    """Sum of the trials' times (training and their evaluation), run one after another without Ray."""
    spec = load_spec(spec_path)
    data = load_data(spec.data)
    torch.set_num_threads(os.cpu_count() or 1)
    total = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        fit(spec.settings(), build_method("clean", {"weight_decay": 0.0}), data)
        total += time.perf_counter() - started
    return total


def study_run(spec_path: Path, concurrent: int, folder: Path) -> dict[str, float]:
    """Times (s) of one study: `wall`, `first_epoch`, and the parts of the breakdown."""
    cpus = os.cpu_count() or 1
    storage = folder / f"c{concurrent}"
    started = time.time()
    marks: dict[str, float] = {}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "study.launch", str(spec_path), "--storage", str(storage),
         "--set", f"search.max_concurrent={concurrent}", "--set", f"resources.cpu={cpus / concurrent}"],
        cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    for line in launcher.stdout:
        if line.startswith("study ") and "MLflow run" in line:
            marks["study_run"] = time.time() - started
        if "Total run time" in line:
            marks["tune_end"] = time.time() - started
    if launcher.wait():
        raise RuntimeError(f"the study failed (exit {launcher.returncode})")
    wall = time.time() - started
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("overhead")
    trials = client.search_runs([experiment.experiment_id], filter_string="tags.`robust_study.trial_id` != ''")
    first_run, first = min(((run, m.timestamp / 1000 - started) for run in trials
                            for m in client.get_metric_history(run.info.run_id, "train_loss") if m.step == 1),
                           key=lambda pair: pair[1])
    first_work = sum(m.value for name in ("epoch_time_s", "eval_time_s")
                     for m in client.get_metric_history(first_run.info.run_id, name) if m.step == 1)
    train = sum(run.data.metrics["train_time_s"] for run in trials)
    evaluation = sum(run.data.metrics["compute_time_s"] - run.data.metrics["train_time_s"] for run in trials)
    return {"wall": wall, "first_epoch": first, "first_step": first - first_work, "start_up": marks["study_run"],
            "to_first_epoch": first - first_work - marks["study_run"], "train": train, "evaluation": evaluation,
            "report": wall - marks["tune_end"], "later": later_trial_starts(storage, concurrent)}


def later_trial_starts(storage: Path, slots: int) -> list[float]:
    """Seconds from start to first training step of every trial but each slot's first (Tune
    reuses the slot's process for them): a first report's time since its trial started, less
    its epoch's training and evaluation (Tune's result files)."""
    firsts = []
    for path in storage.glob("overhead-*/*/result.json"):
        first = json.loads(path.read_text().splitlines()[0])
        started = first["timestamp"] - first["time_this_iter_s"]
        firsts.append((started, first["time_this_iter_s"] - first["epoch_time_s"] - first.get("eval_time_s", 0.0)))
    return [overhead for _, overhead in sorted(firsts)[slots:]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=10000)
    parser.add_argument("--repeats", type=int, default=3, help="fresh interpreters per start-up part")
    args = parse_checked(parser, positive=("trials", "epochs", "subset", "repeats"))
    floor_parts = measure_parts(args.repeats)
    concurrencies = (1, 2, 4)
    trials_at_once = measure_concurrent_trials(concurrencies, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec_path = folder / "overhead.yaml"
        spec_path.write_text(yaml.safe_dump(spec_for(args)))
        bare_before = bare_seconds(spec_path, args.trials)
        runs = {c: study_run(spec_path, c, folder) for c in concurrencies}
        bare_after = bare_seconds(spec_path, args.trials)  # the machine's speed drifts over a long run
    bare = (bare_before + bare_after) / 2
    print("The start-up floor, measured in this run:")
    print_parts(floor_parts)
    print("\nThe trial's parts for N trials started at once (they share the cores), and the floor with them:")
    print_concurrent(floor_parts, trials_at_once)
    print(f"\n{args.trials} trials x {args.epochs} epochs, cw_cnn on {args.subset} Fashion-MNIST images, "
          f"{os.cpu_count()} CPUs; bare sum of the trials' times: {bare:.1f} s (the mean of {bare_before:.1f} s "
          f"before the studies and {bare_after:.1f} s after them)")
    print("| concurrent | study wall s | wall / bare (target <= 1.10) | launch -> first training step s | "
          "floor s at this concurrency (target: <= floor + 2) | later trials: start -> first step s (median, max) |")
    print("|---|---|---|---|---|---|")
    for concurrent, run in runs.items():
        later = (f"{statistics.median(run['later']):.2f}, {max(run['later']):.2f}" if run["later"] else "none")
        floor = floor_seconds(floor_parts, trials_at_once[concurrent])
        print(f"| {concurrent} | {run['wall']:.1f} | {run['wall'] / bare:.2f} | {run['first_step']:.1f} | "
              f"{floor:.1f} | {later} |")
    print("\nWhere the wall time went (s; training and evaluation summed over the trials, so they exceed the "
          "wall when trials run side by side):")
    parts = ["start_up", "to_first_epoch", "train", "evaluation", "report"]
    print(f"{'concurrent':>10} | " + " | ".join(f"{p:>14}" for p in [*parts, "rest", "eval share"]))
    for concurrent, run in runs.items():
        busy = (run["train"] + run["evaluation"]) / concurrent
        rest = run["wall"] - run["start_up"] - run["to_first_epoch"] - busy - run["report"]
        share = run["evaluation"] / (run["train"] + run["evaluation"])
        print(f"{concurrent:>10} | " + " | ".join(f"{run[p]:>14.1f}" for p in parts)
              + f" | {rest:>14.1f} | {share:>14.2f}")
    print("\nFixed cost (start-up, to first training, report) and the bare work from which wall / bare <= 1.10 "
          "(if the rest grows with the work as measured here):")
    print(f"{'concurrent':>10} | {'fixed s':>8} | {'rest / bare':>11} | {'bare s for 1.10':>15}")
    for concurrent, run in runs.items():
        fixed = run["start_up"] + run["to_first_epoch"] + run["report"]
        proportional = (run["wall"] - fixed) / bare - 1
        needed = fixed / (0.10 - proportional) if proportional < 0.10 else float("inf")
        print(f"{concurrent:>10} | {fixed:>8.1f} | {proportional:>11.2f} | {needed:>15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
