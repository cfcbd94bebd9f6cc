"""What a study's fixed start-up cost is made of on this machine, part by part, each measured in
a fresh interpreter: the parts the launcher overlaps (imports, stores) and the parts it cannot
remove (torch, a local Ray, a trial's process and its imports, torch's first optimizer). The
floor under `benchmarks/study_overhead.py`'s "start-up" and "to first training" columns.

    python benchmarks/startup_floor.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"

# each snippet prints the seconds of its part; `time` and `folder` (an empty temporary folder) are given
PARTS = {
    "Python, torch and the spec's checks": (
        "from pathlib import Path\n"
        "from study.spec import load_spec\n"
        f"load_spec(Path({str(QUICKSTART)!r}))\n"
        "print(time.perf_counter() - STARTED)"
    ),
    "a local Ray (ray.init)": (
        "import ray\n"
        "t = time.perf_counter(); ray.init(address='local', include_dashboard=False)\n"
        "print(time.perf_counter() - t); ray.shutdown()"
    ),
    "Tune, MLflow, Optuna, the analysis (imports)": (
        "import study.spec\n"
        "t = time.perf_counter(); import study.run\n"
        "print(time.perf_counter() - t)"
    ),
    "a new MLflow store (SQLite)": (
        "from mlflow.tracking import MlflowClient\n"
        "t = time.perf_counter(); MlflowClient(f'sqlite:///{folder}/mlflow.db').search_experiments(max_results=1)\n"
        "print(time.perf_counter() - t)"
    ),
    "a new Optuna store (SQLite)": (
        "import optuna\n"
        "t = time.perf_counter(); optuna.storages.RDBStorage(f'sqlite:///{folder}/optuna.db')\n"
        "print(time.perf_counter() - t)"
    ),
    "a trial's process (an actor with Tune's runtime env)": (
        "import ray\n"
        "from ray.tune.execution.class_cache import DEFAULT_ENV_VARS\n"
        "ray.init(address='local', include_dashboard=False)\n"
        "class Ping:\n"
        "    def ping(self): return 1\n"
        "actor_class = ray.remote(num_cpus=1, runtime_env={'env_vars': DEFAULT_ENV_VARS})(Ping)\n"
        "t = time.perf_counter(); ray.get(actor_class.remote().ping.remote())\n"
        "print(time.perf_counter() - t); ray.shutdown()"
    ),
    "its imports (torch, Tune, the trainer)": (
        "import ray\n"
        "t = time.perf_counter(); import trainables.trainable\n"
        "print(time.perf_counter() - t)"
    ),
    "its first optimizer (torch._dynamo)": (
        "import torch\n"
        "t = time.perf_counter(); torch.optim.Adam(torch.nn.Linear(2, 2).parameters())\n"
        "print(time.perf_counter() - t)"
    ),
}


def measure(snippet: str) -> float:
    """Seconds that `snippet` prints, run in a fresh interpreter started at STARTED."""
    with tempfile.TemporaryDirectory() as folder:
        program = f"import time\nSTARTED = time.perf_counter()\nfolder = {folder!r}\n" + snippet
        done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the snippet failed:\n{program}\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


# the parts the launcher cannot remove nor overlap: their sum is the floor under launch -> first training step
UNREMOVABLE = ("Python, torch and the spec's checks", "a local Ray (ray.init)",
               "a trial's process (an actor with Tune's runtime env)", "its imports (torch, Tune, the trainer)",
               "its first optimizer (torch._dynamo)")


def measure_parts(repeats: int) -> dict[str, list[float]]:
    """Each part's seconds in `repeats` fresh interpreters."""
    return {name: [measure(textwrap.dedent(snippet)) for _ in range(repeats)] for name, snippet in PARTS.items()}


def floor_seconds(parts: dict[str, list[float]]) -> float:
    """The start-up floor: the sum of the unremovable parts' medians."""
    return sum(statistics.median(parts[name]) for name in UNREMOVABLE)


def print_parts(parts: dict[str, list[float]]) -> None:
    print(f"{'part':<54} | {'median s':>8} | {'min s':>6} | {'max s':>6}")
    print(f"{'-' * 54}-+-{'-' * 8}-+-{'-' * 6}-+-{'-' * 6}")
    for name, times in parts.items():
        mark = " *" if name in UNREMOVABLE else ""
        print(f"{name + mark:<54} | {statistics.median(times):>8.2f} | {min(times):>6.2f} | {max(times):>6.2f}")
    print(f"floor (* parts, which nothing overlaps): {floor_seconds(parts):.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats <= 0:
        print(f"error: --repeats: must be > 0, got {args.repeats}", file=sys.stderr)
        return 2
    print(f"median of {args.repeats} fresh interpreters per part; Python {sys.version.split()[0]}")
    print_parts(measure_parts(args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
