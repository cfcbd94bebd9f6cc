"""CIFAR-10 and CIFAR-100 in torchvision's on-disk layout (pickled batches), downloaded if absent."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from trainables.core.data import DatasetInfo, Splits, register_dataset
from trainables.core.registry import ConfigError

CIFAR10_INFO = DatasetInfo(
    "cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), (50_000, 10_000)
)
CIFAR100_INFO = DatasetInfo(
    "cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), (50_000, 10_000)
)


# What a CIFAR batch's pickle may name: numpy arrays and their reconstruction (numpy 1 and 2
# module names), and the codec Python 3 uses for Python 2 byte strings. Nothing that runs code.
BATCH_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class BatchUnpickler(pickle.Unpickler):
    """An unpickler that builds only what a CIFAR batch holds (dicts, lists, strings, bytes,
    numbers, numpy arrays): a pickle naming any other callable could run code, so it is refused."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in BATCH_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def read_batches(paths: list[Path], label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (uint8 N x 3 x 32 x 32) and labels from CIFAR python-pickle batch files."""
    images, labels = [], []
    for path in paths:
        with open(path, "rb") as f:
            try:
                batch = BatchUnpickler(f, encoding="latin1").load()
            except pickle.UnpicklingError as err:
                raise ConfigError(f"data.root: {path} is not a CIFAR batch: its pickle names {err}, which a CIFAR "
                                  f"batch never does (a pickle can run code, so it is not loaded)") from err
        images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def load_cifar(
    root: Path, folder: str, train: list[str], test: list[str], label_key: str,
    info: DatasetInfo, torchvision_class: str,
) -> Splits:
    base = root / folder
    if not base.is_dir():
        try:
            import torchvision  # only to download: importing it costs a second and a half

            getattr(torchvision.datasets, torchvision_class)(str(root), train=True, download=True)
        except Exception as err:
            raise FileNotFoundError(
                f"{info.name}: {base} does not exist and the torchvision download into {root} "
                f"failed ({type(err).__name__}: {err}). Run once where a network exists, or copy "
                f"the python-pickle batches ({folder}/) into data.root."
            ) from err
    missing = [name for name in train + test if not (base / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{info.name}: {base} lacks {', '.join(missing)}")
    train_x, train_y = read_batches([base / name for name in train], label_key)
    test_x, test_y = read_batches([base / name for name in test], label_key)
    return Splits(info, train_x, train_y, test_x, test_y)


@register_dataset("cifar10", CIFAR10_INFO)
def cifar10(root: Path) -> Splits:
    train = [f"data_batch_{i}" for i in range(1, 6)]
    return load_cifar(root, "cifar-10-batches-py", train, ["test_batch"], "labels",
                      CIFAR10_INFO, "CIFAR10")


@register_dataset("cifar100", CIFAR100_INFO)
def cifar100(root: Path) -> Splits:
    return load_cifar(root, "cifar-100-python", ["train"], ["test"], "fine_labels",
                      CIFAR100_INFO, "CIFAR100")
