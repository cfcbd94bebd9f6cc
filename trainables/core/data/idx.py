"""The IDX file format of MNIST and Fashion-MNIST, gzipped or not."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MNIST_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}


def read_idx(path: Path) -> np.ndarray:
    """An IDX array: magic (0, 0, dtype, ndim), ndim big-endian int32 sizes, then the data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (magic {raw[:4]!r})")
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    return np.frombuffer(raw, IDX_DTYPES[raw[2]], offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write `array` (uint8) as an IDX file, gzipped when `path` ends in .gz (used by tests)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def find_idx_files(folder: Path) -> dict[str, Path] | None:
    """The four MNIST-layout files in `folder` (each .gz or plain), or None if any is missing."""
    found = {}
    for split, stem in MNIST_FILES.items():
        candidates = [folder / stem, folder / f"{stem}.gz"]
        present = [c for c in candidates if c.is_file()]
        if not present:
            return None
        found[split] = present[0]
    return found


def load_idx_folder(files: dict[str, Path]) -> dict[str, torch.Tensor]:
    """Images as uint8 N x 1 x H x W and labels as int64."""
    arrays = {split: read_idx(path) for split, path in files.items()}
    return {
        "train_x": torch.from_numpy(arrays["train_x"].copy()).unsqueeze(1),
        "train_y": torch.from_numpy(arrays["train_y"].astype(np.int64)),
        "test_x": torch.from_numpy(arrays["test_x"].copy()).unsqueeze(1),
        "test_y": torch.from_numpy(arrays["test_y"].astype(np.int64)),
    }
