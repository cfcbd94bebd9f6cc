"""The GPU path on the CPU: bf16 autocast against fp32 (a clean and a double-backprop step),
channels_last, torch.compile and its fallback, and the fp16 refusals."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch

from study.spec import load_spec
from tests.helpers import tiny_spec, write_spec
from trainables.core.data import DataConfig, load_data, to_float
from trainables.core.evaluation import AttackEval, EvalConfig
from trainables.core.methods import StepContext, build_method
from trainables.core.models import ModelConfig, build_model
from trainables.core.registry import ConfigError
from trainables.core.settings import RunSettings, TrainConfig
from trainables.core.train import fit


def settings_for(root: Path, model: ModelConfig, **train: object) -> RunSettings:
    return RunSettings(
        data=DataConfig("fashion_mnist", root=str(root), subset=200, val=0),
        model=model,
        train=TrainConfig(epochs=1, batch_size=50, optimizer="adam", lr=1e-3, **train),
        eval=EvalConfig(examples=50, items=[AttackEval(attack="pgd_l2", eps=[0.5], steps=2)]),
    )


def last_metrics(settings: RunSettings, method: str) -> dict:
    history: list[dict] = []
    fit(settings, build_method(method, {}), load_data(settings.data), on_epoch=lambda m, s, t: history.append(m))
    return history[-1]


@pytest.mark.parametrize("method", ["clean", "loss_gradl2", "sgr"])
def test_a_bf16_autocast_step_matches_fp32_within_two_percent(tiny_fashion_root: Path, method: str) -> None:
    """Loss within 2 % and the gradient's direction within cos 0.99 of fp32's, for a plain step
    and for double backpropagation through the input gradient under autocast."""
    data = load_data(DataConfig("fashion_mnist", root=str(tiny_fashion_root), subset=64, val=0))
    torch.manual_seed(0)
    model = build_model(ModelConfig("cw_cnn", {"widths": "mnist"}), data.info)
    x, y = to_float(data.train_x), data.train_y
    losses, gradients = [], []
    for autocast in (False, True):
        chosen = build_method(method, {"lambda": 0.5} if method != "clean" else {})
        chosen.setup(data)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = chosen.loss(model, x, y, StepContext(epoch=0, step=0, generator=torch.Generator().manual_seed(0)))
        model.zero_grad()
        loss.backward()
        losses.append(float(loss.detach()))
        gradients.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[1] == pytest.approx(losses[0], rel=0.02)
    assert torch.nn.functional.cosine_similarity(gradients[0], gradients[1], dim=0) > 0.99


def test_bf16_and_channels_last_runs_follow_the_fp32_run(tiny_fashion_root: Path) -> None:
    model = ModelConfig("cw_cnn", {"widths": "mnist"})
    reference = last_metrics(settings_for(tiny_fashion_root, model), "clean")
    channels_last = last_metrics(settings_for(tiny_fashion_root, model, channels_last=True), "clean")
    bf16 = last_metrics(settings_for(tiny_fashion_root, model, precision="bf16"), "clean")
    assert channels_last["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-4)
    assert bf16["train_loss"] == pytest.approx(reference["train_loss"], rel=0.02)
    assert abs(bf16["clean_acc"] - reference["clean_acc"]) <= 0.06


def test_compile_trains_as_eager_does_and_falls_back_with_a_warning_on_double_backprop(tiny_fashion_root: Path) -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile on the CPU (inductor) needs a C compiler, and none is installed")
    model = ModelConfig("mlp", {"hidden": [16]})
    eager = last_metrics(settings_for(tiny_fashion_root, model), "clean")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = last_metrics(settings_for(tiny_fashion_root, model, compile=True), "clean")
    assert not [w for w in caught if "train.compile" in str(w.message)]
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    eager = last_metrics(settings_for(tiny_fashion_root, model), "loss_gradl2")
    with pytest.warns(UserWarning, match="train.compile: torch.compile failed .*double backward.*training without it"):
        fallback = last_metrics(settings_for(tiny_fashion_root, model, compile=True), "loss_gradl2")
    assert fallback["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)


def test_fp16_is_refused_on_the_cpu_and_with_double_backprop_methods(tiny_fashion_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a GPU"):
        fit(settings_for(tiny_fashion_root, ModelConfig("mlp", {}), precision="fp16"), build_method("clean", {}),
            load_data(DataConfig("fashion_mnist", root=str(tiny_fashion_root), subset=100, val=0)))
    with pytest.raises(ConfigError, match="train.precision: fp16 needs a GPU .*; allowed: fp32, bf16"):
        load_spec(write_spec(tmp_path, tiny_spec(tiny_fashion_root, train={"precision": "fp16", "device": "cpu"})))
    spec = tiny_spec(tiny_fashion_root, train={"precision": "fp16"})
    with pytest.raises(ConfigError, match=r"train.precision: fp16 with loss_gradl2 \(methods.loss_gradl2\)"):
        load_spec(write_spec(tmp_path, spec))
    with pytest.raises(ConfigError, match="train.precision: 'fp8' is not allowed; allowed: fp32, bf16, fp16"):
        load_spec(write_spec(tmp_path, tiny_spec(tiny_fashion_root, train={"precision": "fp8"})))
