"""A study end to end as a user runs it, and where its wall time went: the launcher in a fresh
storage folder, timed from outside, then the phases it logged on its study run (start-up,
training, search evaluation, strong evaluation, confirm stage, report) and how many strong
evaluations ran and were skipped. Targets for the quickstart: <= 300 s end to end on 2 cores,
strong evaluation <= 25% of the wall time.

    python benchmarks/study_cost.py                                   # search_spaces/quickstart.yaml
    python benchmarks/study_cost.py search_spaces/kernel_reg_fashion.yaml --set search.num_samples=4
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.costs import STRONG_RUN, STRONG_SKIPPED, STRONG_TASK, TOTAL, cost_table  # noqa: E402
from analysis.records import STUDY_TAG  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", type=Path, default=ROOT / "search_spaces" / "quickstart.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        storage = Path(folder) / "runs"
        command = [sys.executable, "-m", "study.launch", str(args.spec.resolve()), "--storage", str(storage),
                   *[f"--set={override}" for override in args.overrides]]
        started = time.perf_counter()
        launched = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if launched.returncode != 0:
            print(launched.stdout[-3000:] + launched.stderr[-3000:], file=sys.stderr)
            print(f"error: the study exited {launched.returncode}", file=sys.stderr)
            return 1
        client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                  filter_string=f"tags.`{STUDY_TAG}` != ''")
        metrics = runs[0].data.metrics
    print(f"{args.spec.name}{' ' + ' '.join(args.overrides) if args.overrides else ''}: {wall:.0f} s end to end "
          f"(the study's own clock: {metrics.get(TOTAL, float('nan')):.0f} s)\n")
    print("| phase | seconds | share |")
    print("|---|---|---|")
    for row in cost_table(metrics).itertuples():
        print(f"| {row.phase} | {row.seconds:.0f} | {row.share} |")
    if STRONG_RUN in metrics:
        print(f"\nstrong evaluations in the search: {metrics[STRONG_RUN]:.0f} run ({metrics.get(STRONG_TASK, 0):.0f} s "
              f"of tasks), {metrics.get(STRONG_SKIPPED, 0):.0f} skipped as dominated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
