"""MNIST and Fashion-MNIST: IDX files in torchvision's layout, Debian's package, or downloaded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from trainables.core.data import DatasetInfo, Splits, register_dataset
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


def register_idx_dataset(
    name: str, info: DatasetInfo, folders: Callable[[Path], list[Path]], torchvision_class: str, how_to_get: str
) -> None:
    """Register an IDX data set: looked up in `folders(root)`, else downloaded by the torchvision
    data set class of that name."""

    def load(root: Path) -> Splits:
        def download() -> object:
            import torchvision  # only to download: importing it costs a second and a half

            return getattr(torchvision.datasets, torchvision_class)(str(root), download=True)

        files = locate_idx(name, folders(root), download, how_to_get)
        return load_idx_dataset(files, info)

    register_dataset(name, info)(load)


register_idx_dataset(
    "fashion_mnist",
    DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,), (60_000, 10_000)),
    lambda root: [root / "FashionMNIST" / "raw", root / "fashion-mnist", root, DEBIAN_FASHION_MNIST],
    "FashionMNIST",
    "`apt-get install dataset-fashion-mnist` (Debian), or set data.root to a folder with the "
    "IDX files, or run once where a network exists.",
)
register_idx_dataset(
    "mnist",
    DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,), (60_000, 10_000)),
    lambda root: [root / "MNIST" / "raw", root / "mnist", root],
    "MNIST",
    "run once where a network exists (torchvision downloads to data.root/MNIST/raw), or copy "
    "the IDX files into one of the folders above.",
)
