"""Data sets in their real on-disk formats, the seeded subset/validation split, augmentation."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from tests.conftest import write_fashion_mnist
from trainables.core.data import AugmentConfig, DataConfig, augment, load_data, train_batches
from trainables.core.data.idx import MNIST_FILES, read_idx, write_idx
from trainables.core.registry import ConfigError


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    array = np.random.default_rng(0).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    write_idx(tmp_path / f"x{suffix}", array)
    np.testing.assert_array_equal(read_idx(tmp_path / f"x{suffix}"), array)


def test_fashion_mnist_reads_torchvision_layout_and_splits_like_the_reference(tmp_path: Path) -> None:
    root = write_fashion_mnist(tmp_path, n_train=300, n_test=50)
    raw = root / "FashionMNIST" / "raw"
    train_x = read_idx(raw / f"{MNIST_FILES['train_x']}.gz")
    train_y = read_idx(raw / f"{MNIST_FILES['train_y']}.gz")
    data = load_data(DataConfig("fashion_mnist", root=str(root), subset=100, val=60, seed=3))
    order = np.random.RandomState(42 + 3).permutation(300)
    np.testing.assert_array_equal(data.train_x.squeeze(1).numpy(), train_x[order[:100]])
    np.testing.assert_array_equal(data.train_y.numpy(), train_y[order[:100]])
    np.testing.assert_array_equal(data.val_y.numpy(), train_y[order[-60:]])
    assert data.test_x.shape == (50, 1, 28, 28) and data.test_x.dtype == torch.uint8
    assert data.info.num_classes == 10 and data.info.shape == (1, 28, 28)


def test_without_subset_the_training_split_is_everything_but_validation(tiny_fashion_root: Path) -> None:
    data = load_data(DataConfig("fashion_mnist", root=str(tiny_fashion_root), val=100))
    assert len(data.train_y) == 500 and len(data.val_y) == 100
    train_and_val = torch.cat([data.train_x, data.val_x]).flatten(1)
    assert torch.unique(train_and_val, dim=0).shape[0] == 600


def test_subset_too_large_is_refused(tiny_fashion_root: Path) -> None:
    with pytest.raises(ConfigError, match="data.subset/data.val"):
        load_data(DataConfig("fashion_mnist", root=str(tiny_fashion_root), subset=550, val=100))


def test_missing_data_set_error_lists_every_place_tried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network unreachable")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_network)
    with pytest.raises(FileNotFoundError) as err:
        load_data(DataConfig("mnist", root=str(tmp_path)))
    message = str(err.value)
    for place in (tmp_path / "MNIST" / "raw", tmp_path / "mnist", tmp_path):
        assert f"  - {place}\n" in message
    assert "network unreachable" in message and "How to get it" in message


def write_cifar(root: Path, folder: str, files: dict[str, int], label_key: str) -> dict[str, dict]:
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name, n in files.items():
        batch = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
                 label_key: rng.integers(0, 10, n).tolist()}
        with open(root / folder / name, "wb") as f:
            pickle.dump(batch, f)
        batches[name] = batch
    return batches


def test_cifar10_reads_python_pickle_batches(tmp_path: Path) -> None:
    files = {f"data_batch_{i}": 20 for i in range(1, 6)} | {"test_batch": 10}
    batches = write_cifar(tmp_path, "cifar-10-batches-py", files, "labels")
    data = load_data(DataConfig("cifar10", root=str(tmp_path), val=10))
    assert data.info.shape == (3, 32, 32) and len(data.train_y) == 90 and len(data.test_y) == 10
    np.testing.assert_array_equal(data.test_x.reshape(10, -1).numpy(), batches["test_batch"]["data"])
    assert data.test_y.tolist() == batches["test_batch"]["labels"]


class RunsCode:
    """A pickled object whose unpickling would call a function: here, create a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_are_unpickled_with_only_what_a_batch_holds(tmp_path: Path, protocol: int) -> None:
    batches = write_cifar(tmp_path, "cifar-10-batches-py", {f"data_batch_{i}": 4 for i in range(1, 6)}, "labels")
    for name, batch in batches.items():  # numpy arrays, lists, strings and bytes, as torchvision's files
        batch.update(batch_label=f"training batch {name}", filenames=[b"a.png"] * 4)
        (tmp_path / "cifar-10-batches-py" / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    marker = tmp_path / "payload-ran"
    crafted = {"data": RunsCode(marker), "labels": [0]}
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps(crafted, protocol=protocol))
    with pytest.raises(ConfigError, match=r"data.root: .*test_batch is not a CIFAR batch: its pickle names "
                                          r"\S+, which a CIFAR batch never does"):
        load_data(DataConfig("cifar10", root=str(tmp_path)))
    assert not marker.exists(), "the crafted batch ran its payload"


def test_cifar100_uses_fine_labels(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path, "cifar-100-python", {"train": 30, "test": 10}, "fine_labels")
    data = load_data(DataConfig("cifar100", root=str(tmp_path)))
    assert data.info.num_classes == 100
    assert data.test_y.tolist() == batches["test"]["fine_labels"]


def test_crop_is_a_window_of_the_zero_padded_image() -> None:
    x = torch.arange(8 * 2 * 6 * 6, dtype=torch.float32).view(8, 2, 6, 6) + 1
    generator = torch.Generator().manual_seed(0)
    out = augment(x, AugmentConfig(crop=2), generator)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    shifts = set()
    for b in range(8):
        matches = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(out[b], padded[b, :, dy:dy + 6, dx:dx + 6])]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 1


def test_flip_mirrors_about_half_of_a_batch_and_is_seeded() -> None:
    x = torch.rand(256, 1, 5, 5)
    out = augment(x, AugmentConfig(flip=True), torch.Generator().manual_seed(1))
    flipped = torch.tensor([torch.equal(o, xi.flip(-1)) for o, xi in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, xi) for o, xi in zip(out, x, strict=True)])
    assert bool((flipped | kept).all()) and 80 < int(flipped.sum()) < 176
    again = augment(x, AugmentConfig(flip=True), torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def test_train_batches_cover_the_training_split_once(tiny_fashion_root: Path) -> None:
    data = load_data(DataConfig("fashion_mnist", root=str(tiny_fashion_root), subset=250))
    batches = list(train_batches(data, 64, AugmentConfig(), torch.Generator().manual_seed(0)))
    assert [len(y) for _, y in batches] == [64, 64, 64, 58]
    xs = torch.cat([x for x, _ in batches])
    assert xs.dtype == torch.float32 and 0.0 <= float(xs.min()) and float(xs.max()) <= 1.0
    assert sorted(torch.cat([y for _, y in batches]).tolist()) == sorted(data.train_y.tolist())


def test_lbdn_augmentation_reflects_and_jitters_each_image_by_its_own_factors() -> None:
    torch.manual_seed(0)
    x = 0.2 + 0.6 * torch.rand(6, 3, 8, 8)
    generator = torch.Generator().manual_seed(0)
    reflected = augment(x, AugmentConfig(crop=3, pad="reflect"), generator)
    assert reflected.min() >= 0.2, "reflect padding brings in image pixels, never zeros"
    torch.testing.assert_close(augment(x, AugmentConfig(color_jitter=[0.0, 0.0, 0.0, 0.0]), generator), x,
                               atol=1e-5, rtol=1e-5)
    brighter = augment(x, AugmentConfig(color_jitter=[0.2, 0.0, 0.0, 0.0]), generator)
    factors = (brighter / x).flatten(1)
    torch.testing.assert_close(factors.min(1).values, factors.max(1).values)  # one factor per image
    assert factors[:, 0].std() > 0 and ((factors[:, 0] >= 0.8) & (factors[:, 0] <= 1.2)).all()
    jittered = augment(x, AugmentConfig(color_jitter=[0.1, [0.5, 2.0], [0.3, 2.0], 0.02]), generator)
    assert jittered.shape == x.shape and 0 <= jittered.min() and jittered.max() <= 1
    grey = augment(x[:, :1], AugmentConfig(color_jitter=[0.1, [0.5, 2.0], [0.3, 2.0], 0.02]), generator)
    assert grey.shape == x[:, :1].shape
