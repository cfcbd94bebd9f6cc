"""Shared fixtures: tiny data sets written in the real on-disk formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainables.core.data.idx import MNIST_FILES, write_idx


def learnable_images(n: int, classes: int, rng: np.random.Generator, shape: tuple[int, ...]) -> tuple:
    """Images whose class is a bright block at a class-specific place, plus noise: learnable in a
    few epochs, so accuracies in tests mean something."""
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 60, (n, *shape)).astype(np.uint8)
    h, w = shape[-2:]
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        images[i, ..., row * (h // 4):(row + 1) * (h // 4), col * (w // 4):(col + 1) * (w // 4)] = 220
    return images, labels.astype(np.uint8)


def write_fashion_mnist(root: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    """Fashion-MNIST IDX .gz files in torchvision's layout under `root`."""
    rng = np.random.default_rng(seed)
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    train_x, train_y = learnable_images(n_train, 10, rng, (28, 28))
    test_x, test_y = learnable_images(n_test, 10, rng, (28, 28))
    arrays = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    for split, stem in MNIST_FILES.items():
        write_idx(folder / f"{stem}.gz", arrays[split])
    return root


@pytest.fixture(scope="session")
def tiny_fashion_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashion_mnist(tmp_path_factory.mktemp("tiny_fashion"))
