"""The study machinery's overhead on one machine.

For 1, 2 and 4 concurrent trials: the wall time of a study of N identical trials (Ray, Optuna,
MLflow, checkpoints included) as a ratio to the sum of the same trials' training times run bare
(`core.fit` in this process, one after another), and the time from launch to the first trial's
first epoch. Prints a table.

    python benchmarks/study_overhead.py [--trials 4] [--epochs 2] [--subset 10000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from mlflow.tracking import MlflowClient

from study.spec import load_spec
from trainables.core.data import load_data
from trainables.core.methods import build_method
from trainables.core.train import fit

ROOT = Path(__file__).resolve().parents[1]


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
    """Sum of the trials' training times, run one after another without Ray."""
    spec = load_spec(spec_path)
    data = load_data(spec.data)
    torch.set_num_threads(os.cpu_count() or 1)
    total = 0.0
    for _ in range(trials):
        started = time.perf_counter()
        fit(spec.settings(), build_method("clean", {"weight_decay": 0.0}), data)
        total += time.perf_counter() - started
    return total


def study_seconds(spec_path: Path, concurrent: int, folder: Path) -> tuple[float, float]:
    """(wall time of the whole study, launch to the first epoch of the first trial)."""
    cpus = os.cpu_count() or 1
    storage = folder / f"c{concurrent}"
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "study.launch", str(spec_path), "--storage", str(storage),
         "--set", f"search.max_concurrent={concurrent}", "--set", f"resources.cpu={cpus / concurrent}"],
        check=True, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wall = time.time() - started
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("overhead")
    first = min(
        m.timestamp
        for run in client.search_runs([experiment.experiment_id], filter_string="tags.`robust_study.trial_id` != ''")
        for m in client.get_metric_history(run.info.run_id, "train_loss") if m.step == 1
    )
    return wall, first / 1000 - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec_path = folder / "overhead.yaml"
        spec_path.write_text(yaml.safe_dump(spec_for(args)))
        bare = bare_seconds(spec_path, args.trials)
        rows = [(c, *study_seconds(spec_path, c, folder)) for c in (1, 2, 4)]
    print(f"{args.trials} trials x {args.epochs} epochs, cw_cnn on {args.subset} Fashion-MNIST images, "
          f"{os.cpu_count()} CPUs; bare sum of training times: {bare:.1f} s")
    print(f"{'concurrent':>10} | {'study wall s':>12} | {'wall / bare':>11} | {'launch -> 1st epoch s':>21}")
    print(f"{'-' * 10}-+-{'-' * 12}-+-{'-' * 11}-+-{'-' * 21}")
    for concurrent, wall, first_epoch in rows:
        print(f"{concurrent:>10} | {wall:>12.1f} | {wall / bare:>11.2f} | {first_epoch:>21.1f}")


if __name__ == "__main__":
    main()
