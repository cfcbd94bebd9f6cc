"""Each data set's true statistics, and each model family's input normalization as its reference
code has it: logits and bounds on identical weights against the reference's normalization step
with the reference's constants (float64)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import Normalize

from trainables.core.data import DATASET_INFO, DataConfig, DatasetInfo, load_data
from trainables.core.data.mnist import DEBIAN_FASHION_MNIST
from trainables.core.models import ModelConfig, build_model

# The constants as the reference repositories write them.
SOC_MEAN, SOC_STD = (0.4914, 0.4822, 0.4465), 0.2507  # singlasahil14/SOC utils.py, improved_l2 lip_convnets.py
LBDN_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))  # acfr/LBDN dataset.py
LBDN_CIFAR100 = ((0.5071, 0.4865, 0.4409), (0.2675, 0.2565, 0.2761))
KERNEL_REG_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # albietz/kernel_reg

# Published training-split statistics (over every pixel of the 50,000 / 60,000 images).
PUBLISHED = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
             "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
             "mnist": ((0.1307,), (0.3081,)), "fashion_mnist": ((0.2860,), (0.3530,))}


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 images N x C x H x W, in [0, 1] units."""
    x = images.double().div(255).transpose(0, 1).reshape(images.shape[1], -1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1, correction=0).tolist())


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_dataset_info_holds_the_published_training_statistics(name: str) -> None:
    assert DATASET_INFO[name].mean == PUBLISHED[name][0] and DATASET_INFO[name].std == PUBLISHED[name][1]


def test_statistics_computed_from_cifar_files_match_their_channels(tmp_path: Path) -> None:
    """Channel c of a loaded CIFAR image is channel c of the file (the statistics are per channel):
    on files whose channels are 0.2 flat, 0 / 1 alternating, and uniform noise."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = np.empty((8, 3, 1024), dtype=np.uint8)
        data[:, 0] = 51
        data[:, 1] = np.tile([0, 255], 512)
        data[:, 2] = rng.integers(0, 256, (8, 1024))
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data.reshape(8, 3072), "labels": [0] * 8}, f)
    splits = load_data(DataConfig("cifar10", root=str(tmp_path), val=0))
    mean, std = channel_stats(splits.train_x)
    assert mean[:2] == pytest.approx((0.2, 0.5), abs=1e-12) and std[:2] == pytest.approx((0.0, 0.5), abs=1e-12)
    assert mean[2] == pytest.approx(0.5, abs=0.01) and std[2] == pytest.approx(1 / 12 ** 0.5, abs=0.01)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_statistics_computed_from_the_real_files_match_dataset_info() -> None:
    splits = load_data(DataConfig("fashion_mnist", root=str(DEBIAN_FASHION_MNIST), val=0))
    mean, std = channel_stats(splits.train_x)
    info = DATASET_INFO["fashion_mnist"]
    assert mean == pytest.approx(info.mean, abs=5e-5) and std == pytest.approx(info.std, abs=5e-5)


def cifar_info(name: str) -> DatasetInfo:
    return DATASET_INFO[name]


def pair(name: str, options: dict, info: DatasetInfo, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelConfig(name, options), info).double().eval()


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_lipconvnet_normalizes_as_soc_and_its_bound_is_the_references(dataset: str) -> None:
    """SOC and improved_l2 divide (x - CIFAR-10's mean) by 0.2507 on CIFAR-10 and CIFAR-100 alike,
    and their bound starts at 1 / 0.2507."""
    info = cifar_info(dataset)
    options = {"depth": 5, "init_channels": 4}
    model = pair("lipconvnet", options, info)
    centred = pair("lipconvnet", {**options, "input_std": "none"}, info)
    centred.load_state_dict(model.state_dict())
    x = torch.rand(3, *info.shape, dtype=torch.float64)
    shift, scale = torch.tensor(SOC_MEAN, dtype=torch.float64).view(3, 1, 1), SOC_STD
    with torch.no_grad():
        reference = centred.body[1:]((x - shift) / scale)
        torch.testing.assert_close(model(x), reference, rtol=1e-9, atol=0)
    assert model.lipschitz_bound() == pytest.approx(centred.lipschitz_bound() / SOC_STD, rel=1e-9)


@pytest.mark.parametrize(("dataset", "constants"), [("cifar10", LBDN_CIFAR10), ("cifar100", LBDN_CIFAR100)])
@pytest.mark.parametrize(("name", "options"), [("kwl", {"layer": "sandwich"}), ("sll_resnet", {"size": "tiny"})])
def test_lbdn_models_normalize_as_lbdn_and_the_bound_gains_one_over_the_smallest_std(
        dataset: str, constants: tuple, name: str, options: dict) -> None:
    """LBDN's data loader applies torchvision's Normalize(mean, std) and its network sees the result;
    the bound in pixel units is gamma / min(std)."""
    info = cifar_info(dataset)
    model = pair(name, {**options, "gamma": 2.0, "normalized": True}, info)
    x = torch.rand(2, *info.shape, dtype=torch.float64)
    with torch.no_grad():
        reference = model.body[1:](Normalize(*constants)(x))
        torch.testing.assert_close(model(x), reference, rtol=1e-9, atol=0)
    assert model.lipschitz_bound() == pytest.approx(2.0 / min(constants[1]), rel=1e-12)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_the_dnn_takes_lbdns_input_step_and_bound(dataset: str) -> None:
    """The DNN shares kwl's and sll_resnet's input step (their logits are checked above; its own
    forward pass costs seconds in float64): its constants and its bound."""
    constants = LBDN_CIFAR10 if dataset == "cifar10" else LBDN_CIFAR100
    model = build_model(ModelConfig("dnn", {"gamma": 2.0, "normalized": True}), cifar_info(dataset))
    assert model.body[0].constants == constants
    assert model.lipschitz_bound() == pytest.approx(2.0 / min(constants[1]), rel=1e-12)


@pytest.mark.parametrize("name", ["vgg11", "resnet18"])
def test_kernel_reg_models_normalize_with_kernel_regs_constants_on_cifar10(name: str) -> None:
    info = cifar_info("cifar10")
    model = pair(name, {}, info)
    first = model.normalize if name == "resnet18" else model[0]
    x = torch.rand(2, *info.shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(first(x), Normalize(*KERNEL_REG_CIFAR10)(x), rtol=1e-12, atol=0)
