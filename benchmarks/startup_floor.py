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

from arguments import parse_checked  # benchmarks/arguments.py

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
    "a new MLflow store (SQLite, a copy of the template)": (
        "from mlflow.tracking import MlflowClient\n"
        "from study.tracking import seed_sqlite_store\n"
        "uri = f'sqlite:///{folder}/mlflow.db'\n"
        "t = time.perf_counter(); seed_sqlite_store(uri); MlflowClient(uri).search_experiments(max_results=1)\n"
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


# the parts the launcher cannot remove nor overlap: their sum is the floor under launch -> first training step;
# the trial's own parts are paid by every trial process Tune starts
LAUNCHER_PARTS = ("Python, torch and the spec's checks", "a local Ray (ray.init)")
TRIAL_PARTS = ("a trial's process (an actor with Tune's runtime env)", "its imports (torch, Tune, the trainer)",
               "its first optimizer (torch._dynamo)")
UNREMOVABLE = LAUNCHER_PARTS + TRIAL_PARTS


# N trial processes started at once, as Tune starts a study's first N trials: each its process, its
# imports and its first optimizer; prints the seconds until the first of them is ready to train
CONCURRENT_TRIALS = (
    "import os\n"
    "import ray\n"
    "from ray.tune.execution.class_cache import DEFAULT_ENV_VARS\n"
    "ray.init(address='local', include_dashboard=False)\n"
    "class Trial:\n"
    "    def ready(self):\n"
    "        import torch\n"
    "        import trainables.trainable\n"
    "        torch.optim.Adam(torch.nn.Linear(2, 2).parameters())\n"
    "        return time.time()\n"
    "actor_class = ray.remote(num_cpus=os.cpu_count() / {n}, runtime_env={{'env_vars': DEFAULT_ENV_VARS}})(Trial)\n"
    "t = time.time(); ready = ray.get([actor_class.remote().ready.remote() for _ in range({n})])\n"
    "print(min(ready) - t); ray.shutdown()"
)


def measure_concurrent_trials(counts: tuple[int, ...], repeats: int) -> dict[int, list[float]]:
    """Per count N, seconds from Tune's start of N trials at once to the first one's first training
    step, less its data and model: the trial parts of the floor when N processes share the cores."""
    return {n: [measure(CONCURRENT_TRIALS.format(n=n)) for _ in range(repeats)] for n in counts}


def measure_parts(repeats: int) -> dict[str, list[float]]:
    """Each part's seconds in `repeats` fresh interpreters."""
    return {name: [measure(textwrap.dedent(snippet)) for _ in range(repeats)] for name, snippet in PARTS.items()}


def floor_seconds(parts: dict[str, list[float]], concurrent: list[float] | None = None) -> float:
    """The start-up floor: the sum of the unremovable parts' medians; with `concurrent` (the times
    of `measure_concurrent_trials` for one N), the trial's three parts are those N at once."""
    if concurrent is None:
        return sum(statistics.median(parts[name]) for name in UNREMOVABLE)
    return sum(statistics.median(parts[name]) for name in LAUNCHER_PARTS) + statistics.median(concurrent)


def print_parts(parts: dict[str, list[float]]) -> None:
    print(f"{'part':<54} | {'median s':>8} | {'min s':>6} | {'max s':>6}")
    print(f"{'-' * 54}-+-{'-' * 8}-+-{'-' * 6}-+-{'-' * 6}")
    for name, times in parts.items():
        mark = " *" if name in UNREMOVABLE else ""
        print(f"{name + mark:<54} | {statistics.median(times):>8.2f} | {min(times):>6.2f} | {max(times):>6.2f}")
    print(f"floor (* parts, which nothing overlaps): {floor_seconds(parts):.1f} s")


def print_concurrent(parts: dict[str, list[float]], concurrent: dict[int, list[float]]) -> None:
    print(f"{'trials started at once':>22} | {'to the first ready s (median)':>29} | {'floor s':>7}")
    for n, times in concurrent.items():
        print(f"{n:>22} | {statistics.median(times):>29.2f} | {floor_seconds(parts, times):>7.1f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parse_checked(parser, positive=("repeats",))
    print(f"median of {args.repeats} fresh interpreters per part; Python {sys.version.split()[0]}")
    parts = measure_parts(args.repeats)
    print_parts(parts)
    print("\nThe trial's parts (process, imports, first optimizer) for N trials started at once, "
          "and the floor with them:")
    print_concurrent(parts, measure_concurrent_trials((1, 2, 4), args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
