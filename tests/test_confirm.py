"""The confirm stage: the search front's configurations retrained once per seed, recorded once
each through a SIGKILL and --resume; the confirmed front's intervals and hypervolume checked by
hand; seeds that change everything random and repeat exactly; bad confirm input refused."""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import ray
import torch
from mlflow.tracking import MlflowClient

from analysis.hypervolume import hypervolume, hypervolume_progress
from analysis.pareto import (
    CLEAN,
    ROBUST,
    confirmed_configs,
    confirmed_front,
    confirmed_table,
    mean_interval,
    select_for_confirmation,
)
from analysis.records import CONFIG_TAG, SEED_TAG, STAGE_TAG
from study.launch import main as launch
from tests.helpers import kill_session, launch_command, start_launch, study_runs, tiny_spec, wait_until, write_spec
from tests.test_train import run, settings
from trainables.core.data import load_data
from trainables.core.evaluation import AttackEval, EvalConfig, NoiseEval, run_evaluation
from trainables.core.models import ModelConfig, build_model

T_975 = {1: 12.706204736, 2: 4.302652730, 4: 2.776445105}  # Student t quantiles, from a printed table


def test_the_interval_is_the_student_t_one_computed_by_hand() -> None:
    mean, half = mean_interval([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(T_975[2] * 0.1 / math.sqrt(3))  # s = 0.1
    values = [0.81, 0.79, 0.84, 0.80, 0.76]
    s = math.sqrt(sum((v - 0.8) ** 2 for v in values) / 4)
    assert mean_interval(values) == pytest.approx((0.8, T_975[4] * s / math.sqrt(5)))
    assert mean_interval([0.3, 0.4])[1] == pytest.approx(T_975[1] * math.sqrt(0.005) / math.sqrt(2))
    assert math.isnan(mean_interval([0.7])[1])


def test_hypervolume_is_the_dominated_area_above_the_origin() -> None:
    assert hypervolume([(0.9, 0.1), (0.5, 0.5)]) == pytest.approx(0.9 * 0.1 + 0.5 * 0.4)
    assert hypervolume([(0.9, 0.1), (0.5, 0.5), (0.4, 0.4)]) == pytest.approx(0.29), "a dominated point adds nothing"
    assert hypervolume([]) == 0.0
    finished = pd.DataFrame({"end_time": [3000, 1000, 2000], "budget": ["full", "full", "stopped_early"],
                             "x": [0.5, 0.9, 0.99], "y": [0.5, 0.1, 0.9]})
    progress = hypervolume_progress(finished, "x", "y", started_ms=0)
    assert list(progress["trials"]) == [1, 2, 3]
    assert list(progress["minutes"]) == pytest.approx([1 / 60, 2 / 60, 3 / 60])
    assert list(progress["hypervolume"]) == pytest.approx([0.09, 0.09, 0.29]), "stopped-early points add nothing"


def trial_frame(rows: list[tuple]) -> pd.DataFrame:
    """Trial runs as analysis reads them: (stage, config_id, method, clean, robust, seed)."""
    frame = pd.DataFrame(rows, columns=["stage", "config_id", "method", CLEAN, ROBUST, "seed"])
    return frame.assign(run_id=[f"r{i}" for i in range(len(frame))], trial_id=[f"t{i}" for i in range(len(frame))],
                        status="FINISHED", budget="full", **{"params.hp.epsilon": "0.5"})


def test_the_confirmed_front_is_the_front_of_the_means() -> None:
    trials = trial_frame([
        ("search", "a", "pgd_l2", 0.80, 0.40, 0), ("search", "b", "clean", 0.90, 0.10, 0),
        ("confirm", "a", "pgd_l2", 0.78, 0.41, 0), ("confirm", "a", "pgd_l2", 0.80, 0.39, 1),
        ("confirm", "b", "clean", 0.91, 0.12, 0), ("confirm", "b", "clean", 0.89, 0.10, 1),
        ("confirm", "c", "loss_gradl2", 0.70, 0.35, 0), ("confirm", "c", "loss_gradl2", 0.72, 0.36, 1),
    ])
    configs = confirmed_configs(trials)
    a = configs.set_index("config_id").loc["a"]
    assert (a["seeds"], a["clean"], a["robust"]) == (2, pytest.approx(0.79), pytest.approx(0.40))
    assert a["clean_half"] == pytest.approx(T_975[1] * math.sqrt(0.0002) / math.sqrt(2))
    assert a["search_run_id"] == "r0"
    front = confirmed_front(configs)
    assert list(front["config_id"]) == ["a", "b"], "c's means are dominated by a's"
    printed = confirmed_table(front)
    assert printed.loc[0, "robust_acc"] == f"0.400 ± {T_975[1] * math.sqrt(0.0002) / math.sqrt(2):.3f}"


def test_selection_takes_each_methods_best_then_the_largest_hypervolume_gains() -> None:
    trials = trial_frame([
        ("search", "a", "pgd_l2", 0.80, 0.40, 0), ("search", "b", "clean", 0.95, 0.05, 0),
        ("search", "c", "pgd_l2", 0.60, 0.45, 0), ("search", "d", "loss_gradl2", 0.50, 0.20, 0),
        ("search", "e", "pgd_l2", 0.85, 0.30, 0),
    ])
    # alone a spans 0.32; next to a, c adds 0.6 * 0.05 = 0.03, e 0.05 * 0.3 = 0.015, b 0.15 * 0.05
    assert list(select_for_confirmation(trials, top=2, per_method=False)["config_id"]) == ["a", "c"]
    assert list(select_for_confirmation(trials, top=9, per_method=False)["config_id"]) == ["a", "c", "e", "b"]
    assert list(select_for_confirmation(trials, top=3, per_method=True)["config_id"]) == ["c", "d", "b"]
    repeated = trial_frame([("search", "a", "pgd_l2", 0.80, 0.40, 0), ("search", "a", "pgd_l2", 0.80, 0.40, 0),
                            ("search", "", "clean", 0.95, 0.05, 0), ("search", "", "gn", 0.60, 0.45, 0)])
    chosen = select_for_confirmation(repeated, top=9, per_method=False)
    assert list(chosen["run_id"]) == ["r0", "r3", "r2"], "one row per id; runs without an id each their own"


def test_a_seed_sets_every_random_draw_and_repeats_exactly_on_cpu(tiny_fashion_root: Path) -> None:
    """Initialization, data order, augmentation, the training attack's random start and the
    evaluation's random starts all follow train.seed."""
    def trained(seed: int) -> list[dict]:
        config = settings(tiny_fashion_root, epochs=2, seed=seed)
        config.data.augment.crop = 2
        config.eval = EvalConfig(examples=60, items=[AttackEval(eps=[1.0], steps=3, restarts=2)])
        return run(config, "pgd_linf", {"epsilon": 0.1, "steps": 2})  # a random start in the box

    first, again, other = trained(0), trained(0), trained(1)
    numbers = ["train_loss", "clean_acc", "robust_acc"]
    assert [[h[k] for k in numbers] for h in first] == [[h[k] for k in numbers] for h in again]
    for name, weights in first[-1]["snapshot"]["model"].items():
        assert torch.equal(weights, again[-1]["snapshot"]["model"][name]), name
    assert first[0]["train_loss"] != other[0]["train_loss"]

    data = load_data(settings(tiny_fashion_root).data)
    model = build_model(ModelConfig("mlp", {"hidden": [64]}), data.info)
    model.load_state_dict(first[-1]["snapshot"]["model"])
    config = EvalConfig(examples=None, items=[NoiseEval(noise="uniform", eps=[1.0])])  # noise that flips some
    draws = [run_evaluation(model, data, config, seed=seed).metrics["robust_acc"] for seed in (0, 0, 1, 2, 3)]
    assert draws[0] == draws[1], "one seed: the same draws"
    assert len(set(draws[1:])) > 1, "other seeds: other draws"


CONFIRM = {"top": 2, "seeds": [0, 1], "epochs": 3, "subset": 250}
RACING = {**CONFIRM, "per_method": True, "examples": 50, "max_examples": 200, "max_seeds": 3, "budget": {"trials": 2}}


def race_rounds(storage: Path) -> list[dict]:
    """The race's saved rounds (race.json in the study folder), [] before it has one."""
    found = [path for path in storage.glob("confirm-*/race.json")]
    return json.loads(found[0].read_text())["rounds"] if found else []


@pytest.mark.integration
def test_confirm_stage_and_its_race_killed_and_resumed_record_each_configuration_and_seed_once(
        tiny_fashion_root: Path, tmp_path: Path) -> None:
    """SIGKILL in the confirm stage's first round, --resume; SIGKILL again in a racing round,
    --resume to the end: every (configuration, seed) once, every racing run's records on the
    race's examples once each, the race's plan all done and logged."""
    spec = tiny_spec(tiny_fashion_root, name="confirm", confirm=RACING, scheduler={"kind": "fifo"},
                     search={"num_samples": 3, "max_concurrent": 2, "seed": 1},  # eps 3: robust accuracy varies
                     eval={"items": [{"kind": "attack", "attack": "pgd_l2", "eps": [3.0], "steps": 3}]})
    spec_path = write_spec(tmp_path, spec)
    storage = tmp_path / "runs"
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    log = tmp_path / "launch.log"

    def confirm_epochs() -> int:
        runs = [r for r in study_runs(client, "confirm")[1] if r.data.tags.get(STAGE_TAG) == "confirm"]
        return sum(len(client.get_metric_history(r.info.run_id, "train_loss")) for r in runs)

    driver = start_launch(spec_path, "--storage", str(storage), log=log)
    try:
        wait_until(lambda: confirm_epochs() >= 1, 600, "a confirmation epoch", driver, log)
    finally:
        kill_session(driver.pid)
    assert "confirm: 2 configuration(s) x 2 seed(s), 3 epochs on 250 images" in log.read_text()

    driver = start_launch(spec_path, "--storage", str(storage), "--resume", log=log)
    try:
        deadline = time.monotonic() + 600
        while not any(not r["done"] for r in race_rounds(storage)):
            assert driver.poll() is None, "the race ended before a round could be killed:\n" + log.read_text()[-3000:]
            assert time.monotonic() < deadline, "no racing round within 600 s"
            time.sleep(0.05)
    finally:
        kill_session(driver.pid)

    done = subprocess.run(launch_command(spec_path, "--storage", str(storage), "--resume"),
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    parents, children = study_runs(client, "confirm")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    search = [r for r in children if r.data.tags[STAGE_TAG] == "search"]
    confirm = [r for r in children if r.data.tags[STAGE_TAG] == "confirm"]
    assert len(search) == 3 and {r.data.tags[SEED_TAG] for r in search} == {"0"}
    pairs = [(r.data.tags[CONFIG_TAG], r.data.tags[SEED_TAG]) for r in confirm]
    assert len(pairs) == len(set(pairs)), "each (configuration, seed) exactly once"
    configs = {config for config, _ in pairs}
    assert len(configs) == 2 and configs <= {r.data.tags[CONFIG_TAG] for r in search}
    rounds = race_rounds(storage)
    assert rounds and all(r["done"] for r in rounds)
    new_seeds = [a for r in rounds for a in r["actions"] if a["kind"] == "seed"]
    assert len(pairs) == 4 + len(new_seeds) and len(new_seeds) <= 2, (pairs, rounds)
    for config in configs:
        seeds = sorted(seed for c, seed in pairs if c == config)
        assert seeds in (["0", "1"], ["0", "1", "2"])
    for run_ in confirm:
        assert run_.info.status == "FINISHED"
        assert [m.step for m in client.get_metric_history(run_.info.run_id, "train_loss")] == [1, 2, 3]
    examples = max(r["examples"] for r in rounds)
    for run_ in confirm:
        records = pd.read_parquet(client.download_artifacts(run_.info.run_id, "eval/examples.parquet",
                                                            str(tmp_path / run_.info.run_id)))
        assert records["index"].is_unique and records["pgd_l2_eps3_acc"].notna().sum() == examples
        assert run_.data.metrics["pgd_l2_eps3_acc"] == pytest.approx(records["pgd_l2_eps3_acc"].dropna().mean())
    by_config = {c: [r for r in confirm if r.data.tags[CONFIG_TAG] == c] for c in configs}
    assert all(rs[0].data.metrics["train_loss"] != rs[1].data.metrics["train_loss"] for rs in by_config.values())

    printed = done.stdout.split("Confirmed front")[1]
    assert f"95% interval over seeds and {examples} examples" in printed.splitlines()[0]
    assert printed.count(" ± ") >= 2 and "settled" in printed and " vs " in printed
    assert "race: after round" in done.stdout
    parent = parents[0].info.run_id
    logged = {a.path for a in client.list_artifacts(parent, "analysis")}
    assert {"analysis/confirmed_front.csv", "analysis/confirmed_front.png", "analysis/front.png",
            "analysis/hypervolume.png", "analysis/race.csv"} <= logged
    race = pd.read_csv(client.download_artifacts(parent, "analysis/race.csv", str(tmp_path)))
    assert len(race) == sum(len(r["actions"]) for r in rounds) and race["reason"].str.len().min() > 0
    table = pd.read_csv(client.download_artifacts(parent, "analysis/confirmed_front.csv", str(tmp_path)))
    assert set(table["config_id"]) == configs
    metrics = client.get_run(parent).data.metrics
    assert 0 < metrics["search_hypervolume"] <= 1 and 0 < metrics["confirmed_hypervolume"] <= 1


@pytest.mark.parametrize(("confirm", "extra", "message"), [
    ({"seeds": []}, {}, "error: confirm.seeds: needs at least one seed"),
    ({"seeds": [0, 1, 0]}, {}, "error: confirm.seeds: seed 0 is repeated"),
    ({"seeds": [0], "top": 0}, {}, "error: confirm.top: must be >= 1, got 0"),
    ({"seeds": [0], "epoch": 3}, {}, "error: confirm.epoch: unknown key; allowed: seeds, top, per_method"),
    ({"top": 2}, {}, "error: confirm.seeds: required key is missing"),
    ({"seeds": [0]}, {"objectives": [{"metric": "robust_acc"}]},
     "error: confirm: confirms a clean-vs-robust front, so objectives must maximize clean_acc and a robust"),
    ({"seeds": [0], "subset": 10 ** 6}, {}, "error: confirm.subset: 1000000 training + 100 validation examples do "
     "not fit in the 60000 training examples of fashion_mnist"),  # by the data set's published size
    ({"seeds": [0], "subset": 50_000}, {},  # within the published size, beyond the tiny files'
     "error: confirm.subset: data.subset/data.val: 50000 training"),
    ({"seeds": [0, 1, 2], "max_seeds": 2}, {}, "error: confirm.max_seeds: must be at least the 3 seed(s) of confirm"),
    ({"seeds": [0, 1], "examples": 100, "max_examples": 50}, {},
     "error: confirm.max_examples: must be at least confirm.examples (100), got 50"),
    ({"seeds": [0, 1], "max_examples": 10 ** 5}, {},
     "error: confirm.max_examples: 100000, but the test split holds 10000 examples; allowed: at most 10000"),
    ({"seeds": [0, 1], "max_examples": 5000}, {},  # within the published size, beyond the tiny files'
     "error: confirm.max_examples: 5000, but the test split holds 200 examples; allowed: at most 200"),
    ({"seeds": [0, 1], "delta": -0.01}, {}, "error: confirm.delta: must be >= 0, got -0.01"),
    ({"seeds": [0, 1], "confidence": 1.0}, {}, "error: confirm.confidence: must be in (0.5, 1), got 1.0"),
    ({"seeds": [0, 1], "confidence": 0.5}, {}, "error: confirm.confidence: must be in (0.5, 1), got 0.5"),
    ({"seeds": [0, 1], "budget": {"trials": 0}}, {}, "error: confirm.budget.trials: must be > 0, got 0"),
    ({"seeds": [0, 1], "budget": {"seconds": -5}}, {}, "error: confirm.budget.seconds: must be > 0, got -5"),
    ({"seeds": [0], "max_seeds": 3}, {}, "error: confirm.seeds: racing needs at least 2 seeds"),
])
def test_bad_confirm_input_is_refused_before_anything_starts(
        tiny_fashion_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, confirm: dict, extra: dict,
        message: str) -> None:
    spec = write_spec(tmp_path, tiny_spec(tiny_fashion_root, confirm=confirm, **extra))
    assert launch([str(spec), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("args", "confirm", "message"), [
    (["--confirm-only"], {"seeds": [0]}, "error: --confirm-only: needs --resume"),
    (["--confirm-only", "--resume"], None, "error: --confirm-only: the spec has no confirm section"),
])
def test_confirm_only_needs_a_study_and_a_confirm_section(
        tiny_fashion_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: list, confirm: dict | None,
        message: str) -> None:
    spec = write_spec(tmp_path, tiny_spec(tiny_fashion_root, **({"confirm": confirm} if confirm else {})))
    assert launch([str(spec), "--storage", str(tmp_path / "runs"), *args]) == 2
    assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "runs").exists()
