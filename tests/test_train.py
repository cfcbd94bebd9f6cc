"""The training loop without Ray: it learns, evaluates what the config asks, resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from trainables.core.data import DataConfig, load_data
from trainables.core.evaluation import AttackEval, DeepFoolEval, EvalConfig, NoiseEval
from trainables.core.methods import build_method
from trainables.core.models import ModelConfig
from trainables.core.settings import TRAIN_WARNING, RunSettings, ScheduleConfig, TrainConfig
from trainables.core.train import fit, main, stall_warning


def settings(root: Path, epochs: int = 3, **train: object) -> RunSettings:
    return RunSettings(
        data=DataConfig("fashion_mnist", root=str(root), subset=400, val=100),
        model=ModelConfig("mlp", {"hidden": [64]}),
        train=TrainConfig(epochs=epochs, batch_size=50, optimizer="adam", lr=3e-3, **train),
        eval=EvalConfig(examples=100, items=[AttackEval(eps=[0.5, 1.5], steps=5)]),
    )


def run(config: RunSettings, method: str = "clean", hparams: dict | None = None, **kwargs: object) -> list[dict]:
    history: list[dict] = []
    data = load_data(config.data)
    fit(config, build_method(method, hparams or {"weight_decay": 0.0}), data,
        on_epoch=lambda metrics, snapshot, tables: history.append({**metrics, "snapshot": snapshot()}), **kwargs)
    return history


def test_fit_learns_and_reports_every_metric(tiny_fashion_root: Path) -> None:
    history = run(settings(tiny_fashion_root))
    assert [h["epoch"] for h in history] == [1, 2, 3]
    last = history[-1]
    assert last["clean_acc"] > 0.9, "the tiny data set is learnable"
    assert last["robust_acc"] == last["pgd_l2_eps0.5_acc"]
    assert last["pgd_l2_eps1.5_acc"] <= last["pgd_l2_eps0.5_acc"] <= last["clean_acc"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h["epoch_time_s"] > 0 for h in history)


def test_the_final_evaluation_runs_once_after_the_last_epoch(tiny_fashion_root: Path) -> None:
    config = settings(tiny_fashion_root, epochs=2)
    config.final_eval = EvalConfig(examples=60, items=[
        AttackEval(attack="fgsm", eps=[0.05, 0.2]), NoiseEval(noise="lrc", eps=[2.0], zeta=[4.0], k=3),
        DeepFoolEval(max_iter=10)])
    history = run(config)
    assert not any(k.startswith("final_") for k in history[0])
    final = {k: v for k, v in history[1].items() if k.startswith("final_")}
    assert set(final) == {f"final_{name}" for name in config.final_eval.metric_names()} | {"final_robust_acc"}
    assert set(final) == set(config.metric_names()) - set(config.eval.metric_names()) - {"robust_acc"}
    assert final["final_robust_acc"] == final["final_fgsm_eps0.05_acc"] <= final["final_clean_acc"]
    assert final["final_fgsm_auc"] == pytest.approx(
        (0.05 * (final["final_clean_acc"] + final["final_fgsm_eps0.05_acc"])
         + 0.15 * (final["final_fgsm_eps0.05_acc"] + final["final_fgsm_eps0.2_acc"])) / 2 / 0.2)
    assert final["final_deepfool_rho"] > 0


def test_a_sgr_run_with_the_data_covariance_resumes_exactly(tiny_fashion_root: Path) -> None:
    config = settings(tiny_fashion_root, epochs=2)
    hparams = {"lambda": 1.0, "covariance": "data"}
    straight = run(config, "sgr", hparams)
    resumed = run(config, "sgr", hparams, resume_from=straight[0]["snapshot"])
    assert straight[1]["train_loss"] == resumed[0]["train_loss"]
    running = run(config, "sgr", {"lambda": 1.0, "update_every": 3})
    again = run(config, "sgr", {"lambda": 1.0, "update_every": 3}, resume_from=running[0]["snapshot"])
    assert running[1]["train_loss"] == again[0]["train_loss"]
    assert running[1]["train_loss"] != straight[1]["train_loss"]


def test_a_resumed_run_continues_exactly_as_if_never_stopped(tiny_fashion_root: Path) -> None:
    config = settings(tiny_fashion_root, epochs=3)
    config.data.augment.crop, config.data.augment.flip = 2, True
    straight = run(config, "pgd_l2", {"epsilon": 0.5})
    resumed = run(config, "pgd_l2", {"epsilon": 0.5}, resume_from=straight[0]["snapshot"])
    assert [h["epoch"] for h in resumed] == [2, 3]
    for a, b in zip(straight[1:], resumed, strict=True):
        assert a["train_loss"] == b["train_loss"] and a["clean_acc"] == b["clean_acc"]
        assert a["robust_acc"] == b["robust_acc"]
    for name, tensor in straight[-1]["snapshot"]["model"].items():
        assert torch.equal(tensor, resumed[-1]["snapshot"]["model"][name])


def test_evaluation_every_k_epochs_and_always_at_the_end(tiny_fashion_root: Path) -> None:
    config = settings(tiny_fashion_root, epochs=3)
    config.eval.every = 2
    history = run(config)
    assert ["clean_acc" in h for h in history] == [False, True, True]


@pytest.mark.parametrize(("rungs", "evaluated"), [([1, 2], [1, 2, 5]), ([], [5]), (None, [1, 2, 3, 4, 5])])
def test_evaluation_at_the_rungs_and_the_last_epoch(tiny_fashion_root: Path, rungs: list | None,
                                                    evaluated: list[int]) -> None:
    """`every: rungs`: where ASHA compares trials (none under FIFO), every epoch outside a study."""
    config = settings(tiny_fashion_root, epochs=5)
    assert config.eval.every == "rungs"
    config.rungs = rungs
    history = run(config)
    assert [h["epoch"] for h in history if "robust_acc" in h] == evaluated
    assert all("train_loss" in h for h in history)


def test_lr_schedules() -> None:
    step = ScheduleConfig(kind="step", step_epochs=2, gamma=0.1)
    assert [step.multiplier(e) for e in (0, 1.9, 2, 4.5)] == pytest.approx([1, 1, 0.1, 0.01])
    linear = ScheduleConfig(kind="piecewise_linear", milestones=[0, 2, 10], values=[0.1, 1.0, 0.0])
    assert [linear.multiplier(e) for e in (0, 1, 2, 6, 10, 12)] == pytest.approx([0.1, 0.55, 1.0, 0.5, 0.0, 0.0])


def test_the_schedule_drives_the_optimizer_per_step(tiny_fashion_root: Path) -> None:
    history = run(settings(tiny_fashion_root, epochs=3, schedule=ScheduleConfig(kind="step", step_epochs=1, gamma=0.5)))
    assert [h["lr"] for h in history] == pytest.approx([3e-3 * 0.5, 3e-3 * 0.25, 3e-3 * 0.125])


def test_cli_runs_one_configuration(tiny_fashion_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = {
        "data": {"dataset": "fashion_mnist", "root": str(tiny_fashion_root), "subset": 200},
        "model": {"name": "mlp", "hidden": [32]},
        "train": {"epochs": 2, "batch_size": 50, "optimizer": "sgd", "lr": 0.05},
        "eval": {"examples": 50, "items": [{"kind": "attack", "eps": [0.5], "steps": 3}]},
        "method": {"name": "loss_gradl2", "lambda": 0.1},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main([str(path), "--set", "train.epochs=1", "--save", str(tmp_path / "state.pt")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("epoch=1 ") and "pgd_l2_eps0.5_acc=" in lines[0]
    assert torch.load(tmp_path / "state.pt", weights_only=True)["epoch"] == 1
    assert main([str(path), "--set", "method.lambda=-1"]) == 2
    assert "method.lambda: must be >= 0.0" in capsys.readouterr().err


def test_a_network_that_does_not_learn_says_so_once_and_one_that_learns_never(tiny_fashion_root: Path) -> None:
    """With lr 1e-12 the loss stays flat: epoch 3's report carries the warning (and no other
    epoch's); at lr 3e-3 the network learns and nothing is said."""
    config = settings(tiny_fashion_root, epochs=4)
    config.train.lr = 1e-12
    stalled = run(config)
    said = [h["epoch"] for h in stalled if TRAIN_WARNING in h]
    assert said == [3]
    flat = stalled[2]["train_loss"]
    assert stalled[2][TRAIN_WARNING].startswith(f"training loss flat at {flat:.3f} through epoch 3, "
                                                "log(10) = 2.303 at chance: the network does not learn")
    assert not any(TRAIN_WARNING in h for h in run(settings(tiny_fashion_root)))


@pytest.mark.parametrize(("losses", "epochs", "warned"), [
    ([2.303, 2.302, 2.301], 3, True), ([2.303, 2.2, 2.301], 3, False), ([2.671, 2.672], 2, True),
    ([2.3], 1, False), ([2.303, 2.302], 3, False),
])
def test_the_stall_is_a_loss_within_one_percent_of_the_first_epochs(losses: list[float], epochs: int,
                                                                    warned: bool) -> None:
    assert (stall_warning(losses, epochs, 10) is not None) == warned
