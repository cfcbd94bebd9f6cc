"""The same study on a local multi-node Ray cluster of 1, 2 and 3 worker nodes of one CPU each
(ray.cluster_utils.Cluster on this machine; the head runs no trials), tracked by a real
`mlflow server`: the study's wall time per node count and the speed-up over one node. Prints a
table. On one machine the nodes share its cores, so beyond the core count the speed-up stops.

    python benchmarks/cluster_scaling.py [--trials 6] [--epochs 2] [--subset 3000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from ray.cluster_utils import Cluster

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' helper that starts and stops a real MLflow server
from arguments import parse_checked  # noqa: E402  (benchmarks/arguments.py)

from tests.helpers import mlflow_server  # noqa: E402


def spec_for(args: argparse.Namespace, nodes: int) -> dict:
    return {
        "name": f"scaling{nodes}",
        "data": {"dataset": "fashion_mnist", "subset": args.subset, "val": 0},
        "model": {"name": "cw_cnn", "widths": "mnist"},
        "train": {"epochs": args.epochs, "batch_size": 128, "optimizer": "adam", "lr": 1e-3},
        "eval": {"examples": 200, "items": [{"kind": "attack", "attack": "pgd_l2", "eps": [1.0], "steps": 5}]},
        "methods": {"clean": {"weight_decay": {"low": 1e-5, "high": 1e-3, "log": True}}},
        "scheduler": {"kind": "fifo"},
        "search": {"num_samples": args.trials, "max_concurrent": nodes, "seed": 0},
        "resources": {"cpu": 1, "gpu": 0},
    }


def study_seconds(args: argparse.Namespace, nodes: int, folder: Path, tracking_uri: str) -> float:
    """Wall time of the launcher, from start to exit, against a fresh cluster of `nodes` nodes."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        spec_path = folder / f"scaling{nodes}.yaml"
        spec_path.write_text(yaml.safe_dump(spec_for(args, nodes)))
        started = time.time()
        subprocess.run([sys.executable, "-m", "study.launch", str(spec_path), "--address", cluster.address,
                        "--tracking-uri", tracking_uri, "--storage", str(folder / "runs"), "--no-confirm"],
                       check=True, cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.time() - started
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--subset", type=int, default=3000)
    args = parse_checked(parser, positive=("trials", "epochs", "subset"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        with mlflow_server(folder) as tracking_uri:
            walls = {nodes: study_seconds(args, nodes, folder, tracking_uri) for nodes in (1, 2, 3)}
    print(f"{args.trials} trials x {args.epochs} epochs, cw_cnn on {args.subset} Fashion-MNIST images, one trial "
          f"per 1-CPU node; this machine has {os.cpu_count()} CPUs")
    print(f"{'nodes':>5} | {'study wall s':>12} | {'speed-up':>8}")
    print(f"{'-' * 5}-+-{'-' * 12}-+-{'-' * 8}")
    for nodes, wall in walls.items():
        print(f"{nodes:>5} | {wall:>12.1f} | {walls[1] / wall:>8.2f}")


if __name__ == "__main__":
    main()
