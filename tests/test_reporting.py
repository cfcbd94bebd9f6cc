"""What a researcher sees: one tiny three-objective study (clean, robust, training time), then
its MLflow experiment (kind tag, run names, the study run's description and analysis files),
Tune's progress table, the Optuna study in its database and in optuna-dashboard, and the report
in a real browser."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import struct
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis.records import EXPERIMENT_KIND_TAG, NOTE_TAG, PARENT_TAG, STUDY_TAG
from analysis.report import markdown_table
from tests.helpers import ROOT, free_port, kill_session, launch_command, tiny_spec, wait_until, write_spec

OBJECTIVES = [{"metric": "clean_acc", "mode": "max"}, {"metric": "robust_acc", "mode": "max"},
              {"metric": "train_time_s", "mode": "min"}]
SAMPLES = 3
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def study(tiny_fashion_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    folder = tmp_path_factory.mktemp("reporting")
    spec = tiny_spec(tiny_fashion_root, name="seen", objectives=OBJECTIVES, scheduler={"kind": "fifo"},
                     search={"num_samples": SAMPLES, "max_concurrent": 2, "seed": 3})
    done = subprocess.run(launch_command(write_spec(folder, spec), "--storage", str(folder / "runs")),
                          cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{folder / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("seen")
    runs = client.search_runs([experiment.experiment_id])
    parent = next(r for r in runs if STUDY_TAG in r.data.tags)
    return {"folder": folder, "stdout": done.stdout, "client": client, "experiment": experiment, "parent": parent,
            "children": [r for r in runs if r.data.tags.get(PARENT_TAG) == parent.info.run_id]}


@pytest.mark.integration
def test_the_experiment_opens_on_training_runs_named_by_their_searched_values(study: dict) -> None:
    experiment, parent = study["experiment"], study["parent"]
    assert experiment.tags[EXPERIMENT_KIND_TAG] == "custom_model_development"
    runs_view = f"/#/experiments/{experiment.experiment_id}/runs"
    assert f"{runs_view} (once: switch the sidebar to \"Model training\")" in study["stdout"]
    assert f"{runs_view}/{parent.info.run_id}" in study["stdout"]
    for child in study["children"]:
        params = child.data.params
        method, hp = params["method"], {k[3:]: v for k, v in params.items() if k.startswith("hp.")}
        if method == "pgd_l2":
            assert child.info.run_name == f"pgd_l2-eps{float(hp['epsilon']):.3g}", "steps is fixed: not in the name"
        elif method == "clean":
            assert child.info.run_name == f"clean-wd{float(hp['weight_decay']):.3g}"
        for metric in ("clean_acc", "robust_acc", "train_time_s", "compute_time_s"):
            assert metric in child.data.metrics
        assert 0 < child.data.metrics["train_time_s"] <= child.data.metrics["compute_time_s"]


@pytest.mark.integration
def test_the_study_run_holds_the_front_curves_report_and_a_description(study: dict) -> None:
    client, parent = study["client"], study["parent"].info.run_id
    logged = {a.path for a in client.list_artifacts(parent, "analysis")}
    assert {"analysis/front.csv", "analysis/front.png", "analysis/hypervolume.png", "analysis/curves.png",
            "analysis/report.html"} <= logged
    description = client.get_run(parent).data.tags[NOTE_TAG]
    assert description.startswith("**seen**") and "| method | hyperparameters | clean_acc |" in description
    front = study["stdout"].split("Pareto front")[1]
    assert "train_s" in front.splitlines()[1] and "steps=" not in front, "only searched values, and the cost"


@pytest.mark.integration
def test_tunes_progress_table_shows_method_searched_values_and_accuracies(study: dict) -> None:
    headers = [line for line in study["stdout"].splitlines() if re.search(r"\|\s*Trial name\s*\|", line)]
    assert headers, study["stdout"][-2000:]
    columns = [c.strip() for c in headers[-1].strip("|").split("|")]
    assert columns[:2] == ["Trial name", "status"]
    assert {"method", "eps", "lam", "wd", "epoch", "clean_acc", "robust_acc", "time (s)"} <= set(columns)
    assert "steps" not in columns and "clip" not in columns


@pytest.mark.integration
def test_the_optuna_study_is_kept_with_every_trial(study: dict) -> None:
    run_name = study["parent"].data.tags[STUDY_TAG]
    kept = optuna.load_study(study_name=run_name, storage=f"sqlite:///{study['folder'] / 'runs' / 'optuna.db'}")
    assert len(kept.trials) == SAMPLES
    assert all(len(t.values) == 3 for t in kept.trials if t.state == optuna.trial.TrialState.COMPLETE)
    assert len(kept.directions) == 3


@pytest.mark.integration
def test_optuna_dashboard_lists_the_study_with_every_trial_and_its_objectives(study: dict) -> None:
    """The README's optuna-dashboard command on the study's optuna.db, asked through its HTTP API."""
    command = next(line for line in README.read_text().splitlines() if line.startswith("optuna-dashboard "))
    port = free_port()
    storage = f"sqlite:///{study['folder'] / 'runs' / 'optuna.db'}"
    arguments = shlex.split(command.replace("sqlite:///runs/optuna.db", storage).replace("8080", str(port)))
    arguments[0] = str(Path(sys.executable).with_name("optuna-dashboard"))
    log = study["folder"] / "dashboard.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(arguments, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def get(path: str) -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
                return json.loads(response.read())

        def answers() -> bool:
            try:
                return bool(get("/api/meta"))
            except OSError:
                return False

        wait_until(answers, 60, "optuna-dashboard", server, log)
        summaries = get("/api/studies")["study_summaries"]
        run_name = study["parent"].data.tags[STUDY_TAG]
        summary = next(s for s in summaries if s["study_name"] == run_name)
        assert summary["directions"] == ["maximize", "maximize", "minimize"]
        detail = get(f"/api/studies/{summary['study_id']}?after=0")
        assert len(detail["trials"]) == SAMPLES
        finished = [t for t in detail["trials"] if t["state"] == "Complete"]
        assert finished and all(len(t["values"]) == len(OBJECTIVES) for t in finished)
    finally:
        kill_session(server.pid)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SIZES = """<script>window.addEventListener("load", () => { document.body.dataset.sizes = JSON.stringify(
[...document.images].map(i => [i.alt, i.naturalWidth, i.naturalHeight, i.width])); });</script></body>"""


def png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_the_report_loads_in_a_browser_without_errors_at_natural_size(study: dict, tmp_path: Path) -> None:
    client, parent = study["client"], study["parent"].info.run_id
    report = Path(client.download_artifacts(parent, "analysis/report.html", str(tmp_path)))
    front = Path(client.download_artifacts(parent, "analysis/front.png", str(tmp_path)))
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", SIZES))
    shown = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                            "--v=0", "--window-size=1600,1200", "--virtual-time-budget=5000", "--dump-dom",
                            probe.as_uri()], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "CONSOLE" not in shown.stderr, [line for line in shown.stderr.splitlines() if "CONSOLE" in line]
    sizes = json.loads(re.search(r'data-sizes="([^"]*)"', shown.stdout).group(1).replace("&quot;", '"'))
    by_alt = {alt: (width, height, shown_width) for alt, width, height, shown_width in sizes}
    width, height = png_size(front.read_bytes())
    assert by_alt["the Pareto front"] == (width, height, width)
    assert all(w > 0 and h > 0 for w, h, _ in by_alt.values()), "every image decodes"


def test_markdown_tables_escape_the_column_separator() -> None:
    table = pd.DataFrame({"a": ["x|y", None], "b": [1.5, 2]})
    assert markdown_table(table) == "| a | b |\n|---|---|\n| x\\|y | 1.5 |\n|  | 2.0 |"
