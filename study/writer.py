"""The driver's MLflow writes, off Tune's event loop: one writer thread per tracking URI takes
them in order from a queue, sends each run's consecutive metric and tag writes as one
`log_batch`, and keeps what the store does not take (an unreachable or restarting tracking
server, a locked SQLite file), retrying in the background, with one warning line when the store
goes away and one when it is back. Tune's callbacks only enqueue, so a slow or absent store
never holds up results and scheduling.

The queue is bounded; where it overflows, metric writes are dropped (with a line saying so):
Tune's own result files hold every report, and the stage's reconciliation re-logs what MLflow
lacks from them (as it does after a kill)."""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient

MAX_QUEUED = 200_000  # writes kept while the store is away (a few hundred bytes each)
MAX_METRICS, MAX_TAGS = 1000, 100  # per log_batch, as MLflow accepts them
SERVER_REQUESTS = 8  # a tracking server takes several runs' batches at once; a SQLite file one writer
TRANSIENT = ("connection", "max retries", "timed out", "timeout", "temporarily", "database is locked",
             "503", "502", "504", "service unavailable", "bad gateway", "refused", "reset by peer")


@dataclass
class Batch:
    """Metrics and tags for the run that `run_key` names (`TrackingWriter.runs`) when the write is
    made; a trial's report carries its `epoch`, written only past the run's last logged one."""

    run_key: str
    metrics: list[Metric] = field(default_factory=list)
    tags: list[RunTag] = field(default_factory=list)
    epoch: int | None = None


Operation = Callable[[MlflowClient], None]


def transient(error: BaseException) -> bool:
    """Whether a failed write is worth retrying: the store unreachable, timing out or busy."""
    text = f"{type(error).__name__}: {error}".lower()
    return isinstance(error, ConnectionError | TimeoutError) or any(word in text for word in TRANSIENT)


class TrackingWriter:
    """Ordered, batched, retried MLflow writes on one thread. A batch names its run by a key that
    an earlier operation registered in `runs` (a trial's run is created by a queued operation, so
    its id is known only when its writes are made); `logged` holds each key's last logged epoch."""

    def __init__(self, tracking_uri: str) -> None:
        self.tracking_uri = tracking_uri
        self.runs: dict[str, str] = {}
        self.logged: dict[str, int] = {}
        self.queue: collections.deque[Batch | Operation] = collections.deque()
        self.condition = threading.Condition()
        self.busy = False
        self.away_since: float | None = None
        self.dropped = 0
        self.client = MlflowClient(tracking_uri)
        parallel = SERVER_REQUESTS if tracking_uri.startswith(("http://", "https://")) else 1
        self.pool = ThreadPoolExecutor(parallel, thread_name_prefix="mlflow-writes") if parallel > 1 else None
        self.state = threading.Lock()  # the away / back lines, said once whichever request sees it
        self.thread = threading.Thread(target=self.loop, name="mlflow-writer", daemon=True)
        self.thread.start()

    def log(self, run_key: str, metrics: list[Metric] = (), tags: list[RunTag] = (), epoch: int | None = None) -> None:
        """Queue metrics and tags for a run (merged with its neighbours into one log_batch)."""
        self.put(Batch(run_key, list(metrics), list(tags), epoch))

    def call(self, operation: Operation) -> None:
        """Queue any other write, `operation(client)`, in order with the rest."""
        self.put(operation)

    def put(self, item: Batch | Operation) -> None:
        with self.condition:
            if len(self.queue) >= MAX_QUEUED and isinstance(item, Batch) and item.metrics and not item.tags:
                self.dropped += 1
                if self.dropped == 1:
                    print(f"tracking: {MAX_QUEUED} writes kept for MLflow at {self.tracking_uri}; dropping further "
                          "metric writes (the stage's end re-logs them from Tune's results)", file=sys.stderr,
                          flush=True)
                return
            self.queue.append(item)
            self.condition.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued write is made; False where `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.condition:
            while self.queue or self.busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self.condition.wait(left if left is not None else 1.0)
        return True

    def loop(self) -> None:
        while True:
            with self.condition:
                while not self.queue:
                    self.condition.wait()
                items = list(self.queue)
                self.queue.clear()
                self.busy = True
            try:
                self.write(items)
            finally:
                with self.condition:
                    self.busy = False
                    self.condition.notify_all()

    def write(self, items: list[Batch | Operation]) -> None:
        """Write `items` in order: each run of consecutive batches merged per run, the runs'
        merged batches sent side by side to a tracking server (they touch different runs)."""
        start = 0
        while start < len(items):
            if isinstance(items[start], Batch):
                end = start
                while end < len(items) and isinstance(items[end], Batch):
                    end += 1
                writes = [lambda client, b=batch: self.send(client, b)
                          for batch in merged([b for b in items[start:end] if self.due(b)])]
                if self.pool is not None and len(writes) > 1:
                    list(self.pool.map(self.retry, writes))
                else:
                    for write in writes:
                        self.retry(write)
                start = end
            else:
                self.retry(items[start])
                start += 1

    def due(self, batch: Batch) -> bool:
        """Whether a batch is still to be written: its run exists and, for a report, its epoch is
        past the run's last logged one (a trial restored from an older checkpoint reports again)."""
        if batch.run_key not in self.runs:  # its run's creation was refused: nothing to write to
            return False
        if batch.epoch is None:
            return True
        if batch.epoch <= self.logged.get(batch.run_key, 0):
            return False
        self.logged[batch.run_key] = batch.epoch
        return True

    def send(self, client: MlflowClient, batch: Batch) -> None:
        run_id = self.runs[batch.run_key]
        tags = list({tag.key: tag for tag in batch.tags}.values())[:MAX_TAGS]  # the newest value of each tag
        for i in range(0, max(len(batch.metrics), 1), MAX_METRICS):
            client.log_batch(run_id, metrics=batch.metrics[i:i + MAX_METRICS], tags=tags if i == 0 else [])

    def retry(self, operation: Operation) -> None:
        """Make one write, retrying while the store is away (backing off to 10 s); a write the
        store refuses for another reason is reported in one line and skipped."""
        wait = 0.5
        while True:
            try:
                operation(self.client)
            except Exception as err:  # noqa: BLE001 - any store error: retried or reported, never raised into Tune
                if not transient(err):
                    print(f"tracking: MLflow refused a write ({type(err).__name__}: {str(err)[:300]}); skipped",
                          file=sys.stderr, flush=True)
                    self.came_back()
                    return
                with self.state:
                    if self.away_since is None:
                        self.away_since = time.monotonic()
                        print(f"tracking: MLflow at {self.tracking_uri} does not answer ({type(err).__name__}); "
                              f"keeping the study's writes ({len(self.queue)} queued) and retrying in the background",
                              file=sys.stderr, flush=True)
                time.sleep(wait)
                wait = min(2 * wait, 10.0)
                continue
            self.came_back()
            return

    def came_back(self) -> None:
        with self.state:
            if self.away_since is not None:
                away = time.monotonic() - self.away_since
                print(f"tracking: MLflow at {self.tracking_uri} answers again after {away:.0f} s; writing the "
                      f"{len(self.queue)} kept writes and those in hand", file=sys.stderr, flush=True)
                self.away_since = None


def merged(batches: list[Batch]) -> list[Batch]:
    """Consecutive batches as one per run, each run's writes in their order."""
    runs: dict[str, Batch] = {}
    for batch in batches:
        into = runs.setdefault(batch.run_key, Batch(batch.run_key))
        into.metrics += batch.metrics
        into.tags += batch.tags
    return list(runs.values())


WRITERS: dict[str, TrackingWriter] = {}
WRITERS_LOCK = threading.Lock()


def writer_for(tracking_uri: str) -> TrackingWriter:
    """The process's writer for `tracking_uri` (one per store: every stage's tracker shares it)."""
    with WRITERS_LOCK:
        if tracking_uri not in WRITERS or not WRITERS[tracking_uri].thread.is_alive():
            WRITERS[tracking_uri] = TrackingWriter(tracking_uri)
        return WRITERS[tracking_uri]


def limit_client_retries() -> None:
    """MLflow's HTTP client retries a request for minutes before it fails; the writer retries on
    its own, so the study's requests fail within seconds and the writer says why."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
