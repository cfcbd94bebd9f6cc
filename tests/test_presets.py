"""Presets: the reference's training settings by name, overridable key by key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.spec import load_spec
from trainables.core.presets import PRESETS
from trainables.core.registry import ConfigError


def spec_with(tmp_path: Path, **sections: object) -> Path:
    spec = {"name": "p", "methods": {"clean": {}}, **sections}
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_the_reference_presets_exist_with_and_without_augmentation() -> None:
    bases = [f"{d}_{m}" for d in ("cifar10small1000", "cifar10small5000", "cifar10") for m in ("vgg", "resnet")]
    lbdn = {"lbdn_kwl_cifar10", "lbdn_kwl_cifar100", "lbdn_resnet_cifar10", "lbdn_dnn_cifar100", "lbdn_toy_square_wave",
            "lbdn_kwl_tiny_imagenet", "lbdn_resnet_tiny_imagenet", "lbdn_dnn_tiny_imagenet"}
    soc = {"soc_cifar10", "soc_cifar100", "soc_fashion_mnist"}
    assert set(PRESETS.names()) == set(bases) | {f"{b}_no_aug" for b in bases} | lbdn | soc
    assert PRESETS.get("cifar10_resnet_no_aug")["data"]["augment"] == {"crop": 0, "flip": False}


def test_a_preset_is_overridden_key_by_key(tmp_path: Path) -> None:
    spec = load_spec(spec_with(tmp_path, preset="cifar10small1000_vgg", train={"epochs": 3},
                               data={"augment": {"flip": False}}), ["train.lr=0.01"])
    assert (spec.data.dataset, spec.data.subset, spec.data.val) == ("cifar10", 1000, 10000)
    assert (spec.data.augment.crop, spec.data.augment.flip) == (4, False)
    assert spec.model.name == "vgg11"
    assert (spec.train.epochs, spec.train.lr, spec.train.momentum, spec.train.optimizer) == (3, 0.01, 0.9, "sgd")
    assert (spec.train.schedule.kind, spec.train.schedule.step_epochs, spec.train.schedule.gamma) == ("step", 40, 0.5)
    full = load_spec(spec_with(tmp_path, preset="cifar10_resnet"))
    assert (full.data.subset, full.train.lr, full.model.name) == (None, 0.1, "resnet18")
    assert full.train.schedule.step_epochs == 30


def test_an_unknown_preset_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="preset: unknown preset 'cifar10_vit'; allowed: cifar10_resnet"):
        load_spec(spec_with(tmp_path, preset="cifar10_vit"))


def test_the_lbdn_presets_carry_the_reference_training(tmp_path: Path) -> None:
    spec = load_spec(spec_with(tmp_path, preset="lbdn_kwl_cifar10", methods={"lipschitz": {"loss": "multimargin"}}))
    assert (spec.model.name, spec.model.options) == ("kwl", {"size": "small"})
    assert (spec.train.optimizer, spec.train.lr, spec.train.batch_size, spec.train.epochs) == ("adam", 0.01, 256, 100)
    schedule = spec.train.schedule
    assert [schedule.multiplier(e) for e in (0, 40, 80, 100)] == pytest.approx([0, 1, 0.05, 0])
    assert spec.data.augment.pad == "reflect" and spec.data.augment.color_jitter[1] == [0.5, 2.0]
    assert spec.eval.primary_robust_metric == "certified_eps0.1412_acc"
    dnn = load_spec(spec_with(tmp_path, preset="lbdn_dnn_cifar100", methods={"lipschitz": {}}))
    assert (dnn.model.name, dnn.train.epochs, dnn.data.dataset) == ("dnn", 400, "cifar100")
    tiny = load_spec(spec_with(tmp_path, preset="lbdn_kwl_tiny_imagenet", methods={"lipschitz": {}}))
    assert (tiny.data.dataset, tiny.model.options, tiny.train.epochs) == (
        "tiny_imagenet", {"size": "small", "gamma": 2.0, "normalized": True}, 100)
    toy = load_spec(spec_with(tmp_path, preset="lbdn_toy_square_wave", methods={"lipschitz": {"loss": "mse"}}))
    assert (toy.model.name, toy.train.batch_size, toy.data.augment.crop, toy.eval.examples) == ("toy", 50, 0, None)


def test_the_soc_presets_drop_the_lr_tenfold_at_half_and_three_quarters(tmp_path: Path) -> None:
    spec = load_spec(spec_with(tmp_path, preset="soc_cifar10", methods={"lipschitz": {"offset": 0.0}}))
    assert (spec.model.name, spec.model.options["depth"], spec.train.epochs) == ("lipconvnet", 20, 200)
    assert [spec.train.schedule.multiplier(e) for e in (0, 99, 101, 149, 151, 199)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01])
    fashion = load_spec(spec_with(tmp_path, preset="soc_fashion_mnist", methods={"lipschitz": {}}))
    assert fashion.data.augment.flip is False and fashion.train.epochs == 60
