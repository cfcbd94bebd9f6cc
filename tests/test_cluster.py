"""A study on a multi-node Ray cluster on this one machine (ray.cluster_utils.Cluster), tracked
by a real `mlflow server`: trials spread over the nodes, a node lost mid-study, a configuration
the cluster cannot serve refused up front, fractional GPUs packed by the scheduler."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from mlflow.tracking import MlflowClient
from ray.cluster_utils import Cluster

from analysis.records import FAILURES_TAG, NODE_TAG, TRIAL_TAG
from study.spec import load_spec
from study.tuner import check_node_resources
from tests.helpers import (
    RAY_CLI,
    epochs_logged,
    kill_session,
    launch_command,
    mlflow_server,
    reported_results,
    start_launch,
    study_runs,
    tiny_spec,
    wait_until,
    write_spec,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head that runs no trials (0 CPUs) and two worker nodes of one CPU each."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def cluster_spec(data_root: Path, name: str, epochs: int, num_samples: int) -> dict:
    """Trials of about a second an epoch: long enough to lose a node in the middle of one."""
    return tiny_spec(
        data_root, name=name,
        data={"subset": 500, "val": 0},
        model={"name": "cw_cnn", "widths": [8, 8, 16, 16, 32, 32]},
        train={"epochs": epochs},
        methods={"clean": {}, "pgd_l2": {"epsilon": {"low": 0.3, "high": 2.0}, "steps": 3}},
        scheduler={"kind": "fifo"}, search={"num_samples": num_samples, "max_concurrent": 2, "seed": 0},
        faults={"max_failures": 2},
    )


def worker_ids(cluster: Cluster) -> set[str]:
    return {node.node_id for node in cluster.worker_nodes}


def test_a_sqlite_tracking_uri_is_refused_on_a_multi_node_cluster(
    cluster: Cluster, tiny_fashion_root: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, cluster_spec(tiny_fashion_root, "refused", 2, 2))
    storage = tmp_path / "runs"
    done = subprocess.run(launch_command(spec, "--address", cluster.address, "--storage", str(storage)),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "error: --tracking-uri: sqlite:///" in done.stderr and "runs on 3 nodes" in done.stderr
    assert "mlflow server" in done.stderr
    assert not storage.exists() or not any(p.is_dir() for p in storage.iterdir()), "nothing was started"


def test_a_trial_larger_than_every_node_is_refused_before_anything_is_recorded(
    cluster: Cluster, tracking_uri: str, tiny_fashion_root: Path, tmp_path: Path
) -> None:
    spec = cluster_spec(tiny_fashion_root, "toolarge", 2, 2)
    spec["resources"] = {"cpu": 2, "gpu": 0}  # two nodes of one CPU: Tune would wait forever
    done = subprocess.run(
        launch_command(write_spec(tmp_path, spec), "--address", cluster.address, "--storage", str(tmp_path / "runs"),
                       "--tracking-uri", tracking_uri),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stderr.endswith("error: resources.cpu: 2.0 per trial, but the largest node has 1 CPUs; "
                                "allowed: 0 < cpu <= 1\n"), done.stderr[-2000:]
    assert MlflowClient(tracking_uri).get_experiment_by_name("toolarge") is None


def test_with_autoscaling_a_trial_larger_than_every_node_is_waited_for_then_refused(
    cluster: Cluster, tracking_uri: str, tiny_fashion_root: Path, tmp_path: Path
) -> None:
    spec = cluster_spec(tiny_fashion_root, "autoscaled", 2, 2)
    spec["resources"] = {"cpu": 2, "gpu": 0, "autoscaling": True, "wait_s": 2}
    started = time.monotonic()
    done = subprocess.run(
        launch_command(write_spec(tmp_path, spec), "--address", cluster.address, "--storage", str(tmp_path / "runs"),
                       "--tracking-uri", tracking_uri),
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2 and time.monotonic() - started >= 2, done.stderr[-3000:]
    assert "warning: resources: no node holds 2 CPU and 0 GPU per trial yet (the largest has 1 and 0); " \
           "asked the autoscaler for one, waiting up to resources.wait_s = 2 s" in done.stderr
    assert done.stderr.endswith("error: resources.cpu: after resources.wait_s = 2 s no node holds a trial (2 CPU, "
                                "0 GPU); the largest has 1 CPUs and 0 GPUs; allowed: a request the autoscaler's "
                                "node types hold, or a longer wait_s\n"), done.stderr[-2000:]
    assert MlflowClient(tracking_uri).get_experiment_by_name("autoscaled") is None


def test_with_autoscaling_a_node_that_joins_during_the_wait_ends_it(
    cluster: Cluster, tiny_fashion_root: Path, tmp_path: Path
) -> None:
    spec = cluster_spec(tiny_fashion_root, "joined", 1, 1)
    spec["resources"] = {"cpu": 2, "gpu": 0, "autoscaling": True, "wait_s": 60}
    waited: list[float] = []

    def wait() -> None:  # the launcher's wait; Ray adds nodes from the main thread only
        started = time.monotonic()
        check_node_resources(load_spec(write_spec(tmp_path, spec), []), poll_s=0.2)
        waited.append(time.monotonic() - started)

    ray.init(address=cluster.address)
    waiter = threading.Thread(target=wait)
    try:
        waiter.start()
        time.sleep(2.0)
        node = cluster.add_node(num_cpus=2)
        waiter.join(60)
    finally:
        ray.shutdown()
    cluster.remove_node(node)
    assert len(waited) == 1 and 2.0 <= waited[0] < 30


def test_trials_spread_over_two_nodes(
    cluster: Cluster, tracking_uri: str, tiny_fashion_root: Path, tmp_path: Path
) -> None:
    spec = write_spec(tmp_path, cluster_spec(tiny_fashion_root, "spread", 2, 2))
    done = subprocess.run(
        launch_command(spec, "--address", cluster.address, "--storage", str(tmp_path / "runs"),
                       "--tracking-uri", tracking_uri),
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    parents, children = study_runs(client, "spread")
    assert len(parents) == 1 and len(children) == 2
    assert {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.tags[NODE_TAG] for r in children} == worker_ids(cluster), "one trial on each worker"
    for run in children:
        assert epochs_logged(client, run) == [1, 2]
        assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pt"]


def test_a_node_removed_mid_study_reschedules_its_trials(
    cluster: Cluster, tracking_uri: str, tiny_fashion_root: Path, tmp_path: Path
) -> None:
    epochs = 10
    spec = write_spec(tmp_path, cluster_spec(tiny_fashion_root, "node-loss", epochs, 3))
    log = tmp_path / "launch.log"
    client = MlflowClient(tracking_uri)
    victim = list(cluster.worker_nodes)[-1]
    survivor = next(iter(worker_ids(cluster) - {victim.node_id}))

    def victim_epochs() -> list[int]:
        return [len(epochs_logged(client, r)) for r in study_runs(client, "node-loss")[1]
                if r.data.tags.get(NODE_TAG) == victim.node_id]

    driver = start_launch(spec, "--address", cluster.address, "--storage", str(tmp_path / "runs"),
                          "--tracking-uri", tracking_uri, log=log)
    try:
        wait_until(lambda: max(victim_epochs(), default=0) >= 3, 300, "3 epochs on the node to remove", driver, log)
        cluster.remove_node(victim, allow_graceful=False)
        assert min(victim_epochs()) < epochs, "the node was removed before its trial ended"
        assert driver.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
    parents, children = study_runs(client, "node-loss")
    assert parents[0].info.status == "FINISHED" and len(children) == 3
    moved = [r for r in children if r.data.tags.get(FAILURES_TAG)]
    assert moved, "the removed node's trial failed over"
    for run in children:
        assert run.info.status == "FINISHED"
        assert epochs_logged(client, run) == list(range(1, epochs + 1)), "each epoch recorded once"
    details = [(r.data.tags.get(NODE_TAG), r.data.tags.get(FAILURES_TAG)) for r in children]
    assert {r.data.tags[NODE_TAG] for r in moved} == {survivor}, (victim.node_id, survivor, details)
    results = reported_results(tmp_path / "runs")
    for run in moved:  # Tune restores the last checkpoint it registered, which may lag one report
        trained = [(r["node_id"], r["epoch"]) for r in results[run.data.tags[TRIAL_TAG]]]
        before = [epoch for node, epoch in trained if node == victim.node_id]
        after = [epoch for node, epoch in trained if node == survivor]
        assert len(before) + len(after) == len(trained) and before == list(range(1, len(before) + 1))
        assert 2 <= after[0] <= before[-1] + 1, f"went on from a checkpoint, not from the start: {trained}"
        assert after == list(range(after[0], epochs + 1))


def test_a_storage_folder_some_node_cannot_see_is_refused(tracking_uri: str, tiny_fashion_root: Path,
                                                           tmp_path: Path) -> None:
    """A second node in its own mount namespace, where the storage folder is hidden under a
    tmpfs: the launcher's probe task on that node cannot see the probe file, so it refuses."""
    storage = tmp_path / "runs"
    storage.mkdir()
    head = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    with open(tmp_path / "blind-node.log", "wb") as log:
        blind = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             f"mount -t tmpfs none {storage} && exec {RAY_CLI} start --address={head.address} --num-cpus=1 --block"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        ray.init(address=head.address, log_to_driver=False)
        try:
            wait_until(lambda: sum(n["Alive"] for n in ray.nodes()) == 2, 120, "the blind node", blind,
                       tmp_path / "blind-node.log")
        finally:
            ray.shutdown()
        spec = write_spec(tmp_path, cluster_spec(tiny_fashion_root, "blind", 1, 1))
        done = subprocess.run(
            launch_command(spec, "--address", head.address, "--storage", str(storage),
                           "--tracking-uri", tracking_uri),
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
    finally:
        kill_session(blind.pid)
        head.shutdown()
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"error: --storage: {storage} is not shared: node(s)" in done.stderr and "cannot see it" in done.stderr
    assert list(storage.iterdir()) == [], "refused before anything was written"


def test_fractional_gpus_pack_trials_onto_one_gpu(tiny_fashion_root: Path, tmp_path: Path) -> None:
    """The node declares one logical GPU (this machine has none): two trials asking 0.5 each
    must run at the same time on it; without a CUDA device they train on the CPU."""
    gpu_cluster = Cluster(initialize_head=True,
                          head_node_args={"num_cpus": 2, "num_gpus": 1, "include_dashboard": False})
    try:
        spec = cluster_spec(tiny_fashion_root, "gpu-share", 3, 2)
        spec["resources"] = {"cpu": 1, "gpu": 0.5}
        storage = tmp_path / "runs"
        done = subprocess.run(
            launch_command(write_spec(tmp_path, spec), "--address", gpu_cluster.address, "--storage", str(storage)),
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )
    finally:
        gpu_cluster.shutdown()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    children = study_runs(client, "gpu-share")[1]
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
    assert {r.data.params["resources.gpu"] for r in children} == {"0.5"}
    first, second = sorted(children, key=lambda r: r.info.start_time)
    assert second.info.start_time < first.info.end_time, "the two half-GPU trials overlapped on one GPU"
