"""Data sets by name, held as uint8 tensors on the training device, with batched on-device
augmentation. Each data set is one module that registers a loader with one signature:
`load(root: Path) -> Splits`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from trainables.core.registry import ConfigError, Registry
from trainables.core.schema import require


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its inputs."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass
class Splits:
    """A data set as it comes off disk: uint8 images N x C x H x W and int64 labels."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


DatasetLoader = Callable[[Path], Splits]
DATASETS: Registry[DatasetLoader] = Registry("data set")


@dataclass
class AugmentConfig:
    crop: int = 0
    flip: bool = False

    def check(self, path: str) -> None:
        require(self.crop >= 0, f"{path}.crop", f"padding must be >= 0, got {self.crop}")


@dataclass
class DataConfig:
    """`subset: N` trains on the first N of the seeded shuffle and `val` holds out its last
    examples, as kernel_reg's cifar10small presets do (numpy RandomState(42 + seed))."""

    dataset: str
    root: str | None = None
    subset: int | None = None
    val: int = 0
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def check(self, path: str) -> None:
        DATASETS.get(self.dataset, f"{path}.dataset")
        require(self.val >= 0, f"{path}.val", f"must be >= 0, got {self.val}")
        require(self.subset is None or self.subset > 0, f"{path}.subset",
                f"must be a positive number of examples, got {self.subset}")


def default_root() -> Path:
    """Where data sets are looked for and downloaded when a spec names no root."""
    return Path(os.environ.get("ROBUST_STUDY_DATA", "data")).expanduser().resolve()


@dataclass
class DataBundle:
    """Train / validation / test splits as uint8 tensors on one device."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: torch.device | str) -> DataBundle:
        moved = {name: getattr(self, name).to(device, non_blocking=True) for name in self.tensor_names}
        return replace(self, **moved)

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return getattr(self, f"{name}_x"), getattr(self, f"{name}_y")

    def __getstate__(self) -> dict:
        """Pickled as numpy arrays, which Ray's object store shares zero-copy: the trials on a
        node map one copy of the data instead of each unpickling its own."""
        state = dict(self.__dict__)
        for name in self.tensor_names:
            state[name] = state[name].cpu().numpy()
        return state

    def __setstate__(self, state: dict) -> None:
        with warnings.catch_warnings():  # the object store's buffers are read-only; data are only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            for name in self.tensor_names:
                state[name] = torch.from_numpy(state[name])
        self.__dict__.update(state)


def load_data(config: DataConfig) -> DataBundle:
    """Load `config.dataset` and cut the seeded train subset, the validation split and the test split."""
    root = Path(config.root).expanduser().resolve() if config.root else default_root()
    splits = DATASETS.get(config.dataset, "data.dataset")(root)
    n = len(splits.train_y)
    n_train = config.subset if config.subset is not None else n - config.val
    if n_train <= 0 or n_train + config.val > n:
        raise ConfigError(
            f"data.subset/data.val: {n_train} training + {config.val} validation examples "
            f"do not fit in the {n} training examples of {config.dataset}"
        )
    order = torch.from_numpy(np.random.RandomState(42 + config.seed).permutation(n))
    train_idx = order[:n_train]
    val_idx = order[n - config.val:]
    return DataBundle(
        info=splits.info,
        train_x=splits.train_x[train_idx].contiguous(),
        train_y=splits.train_y[train_idx].contiguous(),
        val_x=splits.train_x[val_idx].contiguous(),
        val_y=splits.train_y[val_idx].contiguous(),
        test_x=splits.test_x,
        test_y=splits.test_y,
    )


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [0, 1]."""
    return x.float().div_(255.0)


def augment(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, for a whole batch at once on its device."""
    if config.crop:
        b, c, h, w = x.shape
        p = config.crop
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        offsets = torch.randint(0, 2 * p + 1, (2, b), generator=generator, device=x.device)
        rows = offsets[0, :, None] + torch.arange(h, device=x.device)
        cols = offsets[1, :, None] + torch.arange(w, device=x.device)
        x = padded[
            torch.arange(b, device=x.device)[:, None, None, None],
            torch.arange(c, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if config.flip:
        flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x


def train_batches(
    data: DataBundle, batch_size: int, augment_config: AugmentConfig, generator: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented float batches, drawn on the data's device."""
    n = len(data.train_y)
    order = torch.randperm(n, generator=generator, device=generator.device)
    for idx in order.split(batch_size):
        x = augment(to_float(data.train_x[idx]), augment_config, generator)
        yield x, data.train_y[idx]


def eval_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float batches of an evaluation split, in order."""
    for start in range(0, len(y), batch_size):
        yield to_float(x[start:start + batch_size]), y[start:start + batch_size]


from trainables.core.data import cifar, mnist  # noqa: E402,F401  (register the data sets)
