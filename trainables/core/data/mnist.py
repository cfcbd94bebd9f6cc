"""MNIST and Fashion-MNIST: IDX files in torchvision's layout, Debian's package, or downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torchvision

from trainables.core.data import DATASETS, DatasetInfo, Splits
from trainables.core.data.idx import MNIST_FILES, find_idx_files, load_idx_folder

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def locate_idx(
    name: str, folders: list[Path], download: Callable[[], object], how_to_get: str
) -> dict[str, Path]:
    """The first folder holding all four IDX files; else download; else one error naming every place."""
    for folder in folders:
        files = find_idx_files(folder)
        if files is not None:
            return files
    try:
        download()
    except Exception as err:  # no network, a broken mirror: report it with the places tried
        failure = f"download failed: {type(err).__name__}: {err}"
    else:
        failure = "download finished but left no IDX files there"
    for folder in folders:
        files = find_idx_files(folder)
        if files is not None:
            return files
    tried = "\n".join(f"  - {folder}" for folder in folders)
    raise FileNotFoundError(
        f"{name}: none of these folders holds {', '.join(MNIST_FILES.values())} (.gz or plain):\n"
        f"{tried}\n  - torchvision download into {folders[0].parent.parent}: {failure}\n"
        f"How to get it: {how_to_get}"
    )


def load_idx_dataset(files: dict[str, Path], info: DatasetInfo) -> Splits:
    tensors = load_idx_folder(files)
    return Splits(info=info, **tensors)


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: Path) -> Splits:
    folders = [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, DEBIAN_FASHION_MNIST]
    files = locate_idx(
        "fashion_mnist",
        folders,
        lambda: torchvision.datasets.FashionMNIST(str(root), download=True),
        "`apt-get install dataset-fashion-mnist` (Debian), or set data.root to a folder with the "
        "IDX files, or run once where a network exists.",
    )
    info = DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,))
    return load_idx_dataset(files, info)


@DATASETS.register("mnist")
def mnist(root: Path) -> Splits:
    folders = [root / "MNIST" / "raw", root / "mnist", root]
    files = locate_idx(
        "mnist",
        folders,
        lambda: torchvision.datasets.MNIST(str(root), download=True),
        "run once where a network exists (torchvision downloads to data.root/MNIST/raw), or copy "
        "the IDX files into one of the folders above.",
    )
    info = DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,))
    return load_idx_dataset(files, info)
