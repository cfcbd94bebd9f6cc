"""The driver's tracking path under many concurrent trials: reports per second into MLflow, the
driver's time per report, and how late Tune's loop sees a report, against SQLite and a real
`mlflow server` on 127.0.0.1 (started and stopped here).

    python benchmarks/tracking_scale.py --flood 50 200 500 --backlog 10 50 --trials 50 --reports 100 --sync

A local Ray with a fractional CPU per trial (0.02) runs N concurrent trials of a trivial trainable
that reports as fast as Tune lets it, through the project's TrialTracker (its writer thread), and,
with --sync, through the same tracker waiting for each write as the driver did before (0.3).
Per row: sustained reports/s (every report in MLflow / the seconds from the first report to the
last write: bounded by how fast Tune delivers the trials' reports), the tracker callback's time
per report (median, p99), and Tune's loop lag (from the trial's report to the driver's callback,
median, p99). First, the tracking path alone (no Tune): N trials' reports queued at once, as
the writer thread takes them against one log_batch per report (the driver's path before). Each
Tune trial is a Ray worker process (about 100 MB): their number is bounded by the memory.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray  # noqa: E402
from arguments import parse_checked  # noqa: E402  (benchmarks/arguments.py)
from mlflow.entities import Metric, RunTag  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from ray import tune  # noqa: E402

from study.tracking import TrialTracker  # noqa: E402
from study.writer import limit_client_retries, writer_for  # noqa: E402
from trainables.trial import METHOD_KEY  # noqa: E402

METRICS = ["train_loss", "clean_acc", "robust_acc"]


def trivial(config: dict) -> None:
    for epoch in range(1, config["reports"] + 1):
        tune.report({"epoch": epoch, "train_loss": 1.0 / epoch, "clean_acc": 0.5, "robust_acc": 0.25,
                     "sent_at": time.time()})


class TimedTracker(TrialTracker):
    """The project's tracker, timing each report's callback and Tune's lag in seeing it; with
    `sync`, it waits for each write (the driver's path before the writer thread)."""

    def __init__(self, *args: object, sync: bool = False, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.sync, self.callback_s, self.lag_s = sync, [], []
        self.first: float | None = None

    def on_trial_result(self, iteration: int, trials: list, trial: object, result: dict, **info: object) -> None:
        started = time.perf_counter()
        self.first = self.first or time.time()
        self.lag_s.append(time.time() - result["sent_at"])
        super().on_trial_result(iteration, trials, trial, result, **info)
        if self.sync:
            self.writer.flush()
        self.callback_s.append(time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(folder: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'server.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    for _ in range(180):
        try:
            if urllib.request.urlopen(f"{uri}/health", timeout=2).status == 200:
                return server, uri
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the MLflow server did not start")


def measure(uri: str, trials: int, reports: int, cpu: float, sync: bool, folder: Path) -> dict[str, float]:
    client = MlflowClient(uri)
    experiment = client.create_experiment(f"scale-{trials}-{'sync' if sync else 'writer'}-{time.time_ns()}")
    parent = client.create_run(experiment).info.run_id
    tracker = TimedTracker(uri, parent, METRICS, reports, {"trivial": []}, sync=sync)
    tuner = tune.Tuner(
        tune.with_resources(trivial, {"cpu": cpu}),
        param_space={METHOD_KEY: "trivial", "reports": reports},
        tune_config=tune.TuneConfig(num_samples=trials, max_concurrent_trials=trials),
        run_config=tune.RunConfig(storage_path=str(folder / "tune"), callbacks=[tracker], verbose=0),
    )
    tuner.fit()
    writer_for(uri).flush()
    seconds = time.time() - tracker.first
    logged = sum(len(client.get_metric_history(r.info.run_id, "train_loss"))
                 for r in client.search_runs([experiment], max_results=trials + 1) if r.info.run_id != parent)
    callback, lag = np.array(tracker.callback_s) * 1000, np.array(tracker.lag_s) * 1000
    return {"reports": logged, "expected": trials * reports, "per_s": logged / seconds,
            "cb_median": float(np.median(callback)), "cb_p99": float(np.percentile(callback, 99)),
            "lag_median": float(np.median(lag)), "lag_p99": float(np.percentile(lag, 99))}


def flood(uri: str, runs: int, reports: int, sync: bool) -> float:
    """Reports per second the tracking path takes when `runs` trials each have `reports` reports
    waiting (round-robin, as concurrent trials report): through the writer thread, or with
    `sync` one log_batch per report as the driver made them before (on the first 500)."""
    client = MlflowClient(uri)
    experiment = client.create_experiment(f"flood-{runs}-{'sync' if sync else 'writer'}-{time.time_ns()}")
    run_ids = [client.create_run(experiment).info.run_id for _ in range(runs)]
    now = int(time.time() * 1000)
    queue = [(run_id, step) for step in range(1, reports + 1) for run_id in run_ids]
    if sync:  # one call per report whatever waits: its first 500 tell its rate
        queue = queue[:500]
        started = time.perf_counter()
        for run_id, step in queue:
            client.log_batch(run_id, metrics=[Metric(m, 0.5, now, step) for m in METRICS],
                             tags=[RunTag("robust_study.node_id", "n")])
        return len(queue) / (time.perf_counter() - started)
    writer = writer_for(uri)
    writer.runs.update({run_id: run_id for run_id in run_ids})
    started = time.perf_counter()
    for run_id, step in queue:
        writer.log(run_id, [Metric(m, 0.5, now, step) for m in METRICS], [RunTag("robust_study.node_id", "n")], step)
    writer.flush()
    return len(queue) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, nargs="*", default=[50], help="Tune trial counts (none: skip Tune)")
    parser.add_argument("--reports", type=int, default=50, help="reports per trial")
    parser.add_argument("--cpu", type=float, default=0.02, help="CPUs per trial")
    parser.add_argument("--sync", action="store_true", help="also the synchronous path (each write waited for)")
    parser.add_argument("--flood", type=int, nargs="+", default=[50, 200, 500],
                        help="trial counts for the tracking path alone (reports queued at once, no Tune)")
    parser.add_argument("--backlog", type=int, nargs="+", default=[10, 50],
                        help="reports of each trial queued at once in the tracking path alone")
    args = parse_checked(parser, argv, positive=("trials", "reports", "cpu", "flood", "backlog"))
    limit_client_retries()
    rows, floods = [], []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        server, server_uri = start_server(folder)
        try:
            for runs in args.flood:
                for store, uri in (("SQLite", f"sqlite:///{folder / 'flood.db'}"), ("server", server_uri)):
                    synchronous = flood(uri, runs, 1, True)
                    for backlog in args.backlog:
                        floods.append((runs, store, backlog, flood(uri, runs, backlog, False), synchronous))
                        print(floods[-1], flush=True)
            for trials in args.trials:
                ray.init(address="local", num_cpus=max(2, math.ceil(trials * args.cpu)), include_dashboard=False,
                         log_to_driver=False)
                try:
                    for store, uri in (("SQLite", f"sqlite:///{folder / 'mlflow.db'}"), ("server", server_uri)):
                        for sync in (False, True) if args.sync else (False,):
                            row = measure(uri, trials, args.reports, args.cpu, sync, folder)
                            rows.append((trials, store, "synchronous" if sync else "writer thread", row))
                            print(rows[-1], flush=True)
                finally:
                    ray.shutdown()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
    print("\nThe tracking path alone: each trial's reports queued at once (3 metrics and a tag each)\n")
    print("| trials | store | reports waiting per trial | writer thread reports/s | one log_batch per report "
          "(before) reports/s |")
    print("|---|---|---|---|---|")
    for runs, store, backlog, threaded, synchronous in floods:
        print(f"| {runs} | {store} | {backlog} | {threaded:.0f} | {synchronous:.0f} |")
    print(f"\nReal Tune trials: {args.reports} reports per trial, {args.cpu} CPU per trial; times in ms\n")
    print("| trials | store | path | reports in MLflow | reports/s sustained | callback median / p99 | "
          "Tune lag median / p99 |")
    print("|---|---|---|---|---|---|---|")
    for trials, store, path, r in rows:
        print(f"| {trials} | {store} | {path} | {r['reports']} / {r['expected']} | {r['per_s']:.0f} | "
              f"{r['cb_median']:.2f} / {r['cb_p99']:.1f} | {r['lag_median']:.0f} / {r['lag_p99']:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
