"""`ray job submit --working-dir . -- python -m study.launch SPEC.yaml` on a cluster started with
`ray start --head` (token authentication on, as current Ray does by default)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import RAY_CLI, ROOT, free_port, kill_session, study_runs, tiny_spec, write_spec

pytestmark = pytest.mark.integration


def test_a_study_runs_as_a_ray_job(tiny_fashion_root: Path, tmp_path: Path) -> None:
    port, dashboard, agent = free_port(), free_port(), free_port()
    head = subprocess.Popen(  # its own agent port: another Ray on this machine holds the default one
        [RAY_CLI, "start", "--head", "--port", str(port), "--dashboard-port", str(dashboard), "--num-cpus", "2",
         "--include-dashboard", "true", "--disable-usage-stats", "--dashboard-host", "127.0.0.1",
         "--dashboard-agent-listen-port", str(agent)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out[-3000:]
        spec = write_spec(tmp_path, tiny_spec(tiny_fashion_root, name="job", search={"num_samples": 2}))
        storage = tmp_path / "runs"
        submit = [RAY_CLI, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir", ".", "--",
                  sys.executable, "-m", "study.launch", str(spec), "--storage", str(storage)]
        without_token = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
        refused = subprocess.run(submit, cwd=ROOT, capture_output=True, text=True, timeout=120, env=without_token)
        assert refused.returncode != 0 and "Authentication required" in refused.stdout + refused.stderr, \
            "the cluster has token authentication on"
        job = subprocess.run(submit, cwd=ROOT, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "RAY_AUTH_MODE": "token"})
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "Pareto front" in job.stdout and "succeeded" in job.stdout + job.stderr
    finally:
        kill_session(head.pid)
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    parents, children = study_runs(client, "job")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2 and {r.info.status for r in children} == {"FINISHED"}
