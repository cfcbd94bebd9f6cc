"""Data sets by name, held as uint8 tensors on the training device, with batched on-device
augmentation. Each data set is one module that registers a loader with one signature:
`load(root: Path) -> Splits`."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from trainables.core.registry import ConfigError, Registry
from trainables.core.schema import require


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its inputs; `mean` and `std` are the training split's true
    per-channel statistics in [0, 1] pixel units (over every pixel of every image)."""

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    sizes: tuple[int, int] | None = None  # (training, test) examples as published: specs are checked against it


@dataclass
class Splits:
    """A data set as it comes off disk: uint8 images N x C x H x W and int64 labels (or, for a
    one-output regression, float inputs and float targets)."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


DatasetLoader = Callable[[Path], Splits]
DATASETS: Registry[DatasetLoader] = Registry("data set")
DATASET_INFO: dict[str, DatasetInfo] = {}  # known before loading: specs check models against it


def register_dataset(name: str, info: DatasetInfo) -> Callable[[DatasetLoader], DatasetLoader]:
    """Register a data set's loader under `name`, with the DatasetInfo its splits carry."""

    def register(loader: DatasetLoader) -> DatasetLoader:
        DATASET_INFO[name] = info
        return DATASETS.register(name)(loader)

    return register


@dataclass
class AugmentConfig:
    """Random crop after padding by `crop` pixels (`pad`: zeros, or reflect as LBDN), horizontal
    flip, and colour jitter [brightness, contrast, saturation, hue] with factors drawn per
    image (LBDN: [0.1, [0.5, 2], [0.3, 2], 0.02]; a number b means [1 - b, 1 + b], hue in
    [-h, h] turns of the colour wheel)."""

    crop: int = 0
    pad: Literal["zeros", "reflect"] = "zeros"
    flip: bool = False
    color_jitter: list[float | list[float]] | None = None

    def check(self, path: str) -> None:
        require(self.crop >= 0, f"{path}.crop", f"padding must be >= 0, got {self.crop}")
        if self.color_jitter is not None:
            require(len(self.color_jitter) == 4, f"{path}.color_jitter",
                    f"needs [brightness, contrast, saturation, hue], got {self.color_jitter}")
            require(0 <= jitter_range(self.color_jitter[3], hue=True)[1] <= 0.5, f"{path}.color_jitter",
                    f"hue must be within [0, 0.5], got {self.color_jitter[3]}")

    def jitter_ranges(self) -> list[tuple[float, float]]:
        return [jitter_range(v, hue=i == 3) for i, v in enumerate(self.color_jitter or [])]


def jitter_range(value: float | list[float], hue: bool = False) -> tuple[float, float]:
    """torchvision's ColorJitter convention: b -> [max(0, 1 - b), 1 + b] ([-b, b] for hue)."""
    if isinstance(value, list):
        return float(value[0]), float(value[1])
    return (-value, value) if hue else (max(0.0, 1 - value), 1 + value)


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
        require(0 <= self.seed <= 2 ** 32 - 43, f"{path}.seed",
                f"must be in 0 .. 2^32 - 43 (the split draws from RandomState(42 + seed)), got {self.seed}")
        require(self.subset is None or self.subset > 0, f"{path}.subset",
                f"must be a positive number of examples, got {self.subset}")
        self.check_size(path, self.subset)

    def check_size(self, path: str, subset: int | None) -> None:
        """Refuse a subset and validation split larger than the data set's published training split
        (known without loading it; a data.root holding fewer images is refused when it loads)."""
        sizes = DATASET_INFO[self.dataset].sizes
        if sizes is None:
            return
        if subset is None:
            require(self.val < sizes[0], f"{path}.val", f"{self.val} validation examples leave none of the "
                    f"{sizes[0]} training examples of {self.dataset} to train on; allowed: val < {sizes[0]}")
            return
        require(subset + self.val <= sizes[0], f"{path}.subset",
                f"{subset} training + {self.val} validation examples do not fit in the {sizes[0]} "
                f"training examples of {self.dataset}; allowed: subset + val <= {sizes[0]}")


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
    """uint8 pixels -> float in [0, 1]; float inputs (a regression's) as they are."""
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


def color_jitter(x: torch.Tensor, ranges: list[tuple[float, float]], generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue changed by per-image random factors, in
    ColorJitter's order. Hue turns the chroma in the YIQ plane (close to HSV's hue shift, and
    batched). Grey (one-channel) images take brightness and contrast only."""

    def factor(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(x.shape[0], 1, 1, 1, generator=generator, device=x.device)

    brightness, contrast, saturation, hue = ranges
    x = (x * factor(*brightness)).clamp(0, 1)
    grey = x.mean(1, keepdim=True) if x.shape[1] == 1 else (x * GREY.to(x.device)).sum(1, keepdim=True)
    x = (grey.mean((2, 3), keepdim=True) + factor(*contrast) * (x - grey.mean((2, 3), keepdim=True))).clamp(0, 1)
    if x.shape[1] != 3:
        return x
    grey = (x * GREY.to(x.device)).sum(1, keepdim=True)
    x = (grey + factor(*saturation) * (x - grey)).clamp(0, 1)
    yiq = torch.einsum("ij,bjhw->bihw", RGB_TO_YIQ.to(x.device), x)
    angle = 2 * torch.pi * factor(*hue)[:, 0]
    cos, sin = torch.cos(angle), torch.sin(angle)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(RGB_TO_YIQ).to(x.device), yiq).clamp(0, 1)


GREY = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def augment(x: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random crop with padding, horizontal flip and colour jitter, for a whole batch at once on
    its device."""
    if config.crop:
        b, c, h, w = x.shape
        p = config.crop
        padded = torch.nn.functional.pad(x, (p, p, p, p), mode="reflect" if config.pad == "reflect" else "constant")
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
    if config.color_jitter is not None:
        x = color_jitter(x, config.jitter_ranges(), generator)
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


from trainables.core.data import cifar, mnist, square_wave, tiny_imagenet  # noqa: E402,F401  (register the data sets)
