"""Tiny-ImageNet (LBDN Tables 2-4): the standard `tiny-imagenet-200/` layout under data.root
(`wnids.txt`, `train/<wnid>/images/*.JPEG`, `val/images/*.JPEG` with `val_annotations.txt`),
extracted from `tiny-imagenet-200.zip` there if only the archive is present. The 110,000 JPEGs
are decoded once (grey ones to RGB) into uint8 tensors and cached beside the data, keyed by the
file list, so later studies load it in a second. Labels follow the sorted wnids, as the
reference's loader; the validation split is the test split, as in LBDN."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trainables.core.data import DatasetInfo, Splits, register_dataset

TINY_IMAGENET_INFO = DatasetInfo(
    "tiny_imagenet", 200, (3, 64, 64), (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821), (100_000, 10_000)
)
FOLDER = "tiny-imagenet-200"
ARCHIVE = "tiny-imagenet-200.zip"
CACHE = "robust_study_uint8.pt"
HOW_TO_GET = ("download http://cs231n.stanford.edu/tiny-imagenet-200.zip where a network exists and put "
              "the zip (or its extracted tiny-imagenet-200/ folder) into data.root")


def image_lists(base: Path) -> tuple[list[Path], list[int], list[Path], list[int]]:
    """(train files, train labels, val files, val labels) of the layout, in a fixed order."""
    for needed in ("wnids.txt", "train", "val/images", "val/val_annotations.txt"):
        if not (base / needed).exists():
            raise FileNotFoundError(f"tiny_imagenet: {base} lacks {needed}; {HOW_TO_GET}")
    wnids = sorted(line.strip() for line in (base / "wnids.txt").read_text().splitlines() if line.strip())
    index = {wnid: i for i, wnid in enumerate(wnids)}
    train_files, train_labels = [], []
    for wnid in wnids:
        files = sorted((base / "train" / wnid / "images").glob("*.JPEG"))
        train_files += files
        train_labels += [index[wnid]] * len(files)
    annotations = {}
    for number, line in enumerate((base / "val" / "val_annotations.txt").read_text().splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(f"tiny_imagenet: val_annotations.txt line {number}: {line[:80]!r} "
                             f"names no wnid of wnids.txt")
        annotations[fields[0]] = index[fields[1]]
    val_files = sorted((base / "val" / "images").glob("*.JPEG"))
    unlabelled = [f.name for f in val_files if f.name not in annotations]
    if unlabelled:
        raise ValueError(f"tiny_imagenet: val_annotations.txt has no label for {unlabelled[0]} "
                         f"({len(unlabelled)} images)")
    return train_files, train_labels, val_files, [annotations[f.name] for f in val_files]


def fingerprint(files: list[Path]) -> str:
    """Names and sizes of the image files: a changed, added or removed image changes it."""
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.parent.name}/{f.name}:{f.stat().st_size}\n".encode())
    return digest.hexdigest()


def decode(files: list[Path]) -> torch.Tensor:
    """JPEG files -> uint8 N x 3 x 64 x 64 (grey images converted to RGB), by Pillow."""
    images = np.empty((len(files), 64, 64, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as image:
            if image.size != (64, 64):
                raise ValueError(f"tiny_imagenet: {path} is {image.size} pixels, not 64 x 64")
            images[i] = np.asarray(image.convert("RGB"))
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def save_cache(path: Path, tensors: dict[str, torch.Tensor | str]) -> None:
    """Write the cache atomically; a read-only data folder only costs the decoding next time."""
    partial = path.with_suffix(f".{os.getpid()}.partial")
    try:
        torch.save(tensors, partial)
        partial.replace(path)
    except OSError as err:
        partial.unlink(missing_ok=True)
        warnings.warn(f"tiny_imagenet: could not cache the decoded images at {path} ({err}); "
                      f"they will be decoded again next time", stacklevel=2)


@register_dataset("tiny_imagenet", TINY_IMAGENET_INFO)
def tiny_imagenet(root: Path) -> Splits:
    base = root / FOLDER
    if not base.is_dir():
        if not (root / ARCHIVE).is_file():
            raise FileNotFoundError(f"tiny_imagenet: neither {base} nor {root / ARCHIVE} exists; {HOW_TO_GET}")
        from torchvision.datasets.utils import extract_archive  # only here: importing torchvision is slow

        extract_archive(str(root / ARCHIVE), str(root))
    train_files, train_labels, val_files, val_labels = image_lists(base)
    key = fingerprint(train_files + val_files)
    cache = base / CACHE
    if cache.is_file():
        stored = torch.load(cache, weights_only=True)
        if stored.get("fingerprint") == key:
            return Splits(TINY_IMAGENET_INFO, stored["train_x"], stored["train_y"], stored["test_x"], stored["test_y"])
    tensors = {
        "train_x": decode(train_files), "train_y": torch.tensor(train_labels, dtype=torch.int64),
        "test_x": decode(val_files), "test_y": torch.tensor(val_labels, dtype=torch.int64),
    }
    save_cache(cache, {**tensors, "fingerprint": key})
    return Splits(TINY_IMAGENET_INFO, **tensors)
