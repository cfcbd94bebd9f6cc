"""Tiny-ImageNet read from a tiny tree in the real layout, with real JPEG files: labels by the
sorted wnids, grey images as RGB, the uint8 cache and when it is rebuilt, the zip, the errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainables.core.data import DataConfig, load_data, tiny_imagenet
from trainables.core.models import MODELS

WNIDS = ["n02124075", "n01443537", "n09246464"]  # deliberately not sorted in wnids.txt


def write_jpeg(path: Path, rng: np.random.Generator, grey: bool = False, side: int = 64) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    smooth = rng.integers(0, 256, (8, 8, 1 if grey else 3)).astype(np.uint8)
    image = Image.fromarray(smooth.squeeze(-1) if grey else smooth).resize((side, side), Image.BILINEAR)
    image.save(path, "JPEG", quality=95)


def write_tiny_imagenet(root: Path) -> dict[str, list]:
    """Two training images per class (the first class's second one grey), four validation images."""
    base = root / "tiny-imagenet-200"
    rng = np.random.default_rng(0)
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    train = []
    for c, wnid in enumerate(WNIDS):
        for i in range(2):
            path = base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG"
            write_jpeg(path, rng, grey=c == 0 and i == 1)
            train.append((path, sorted(WNIDS).index(wnid)))
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    val = []
    lines = []
    for i, wnid in enumerate([WNIDS[2], WNIDS[0], WNIDS[1], WNIDS[2]]):
        path = base / "val" / "images" / f"val_{i}.JPEG"
        write_jpeg(path, rng)
        val.append((path, sorted(WNIDS).index(wnid)))
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {"train": sorted(train, key=lambda p: (p[1], p[0].name)), "val": val}


def pil_pixels(path: Path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def test_reads_the_layout_with_labels_by_sorted_wnid_and_pixels_as_pil_decodes_them(tmp_path: Path) -> None:
    files = write_tiny_imagenet(tmp_path)
    data = load_data(DataConfig("tiny_imagenet", root=str(tmp_path), subset=6))
    info = data.info
    assert (info.num_classes, info.shape) == (200, (3, 64, 64))
    assert data.test_x.dtype == torch.uint8 and data.test_x.shape == (4, 3, 64, 64)
    assert data.test_y.tolist() == [label for _, label in files["val"]]
    assert sorted(data.train_y.tolist()) == [0, 0, 1, 1, 2, 2]
    for image, (path, _) in zip(data.test_x, files["val"], strict=True):
        assert torch.equal(image, pil_pixels(path))
    grey = tiny_imagenet.decode([files["train"][3][0]])[0]  # the grey one, label 1
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])


def test_decoded_images_are_cached_and_rebuilt_when_an_image_changes(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    files = write_tiny_imagenet(tmp_path)
    first = tiny_imagenet.tiny_imagenet(tmp_path)
    assert (tmp_path / "tiny-imagenet-200" / tiny_imagenet.CACHE).is_file()

    def no_decoding(paths: list[Path]) -> torch.Tensor:
        raise AssertionError("decoded again although the cache matches")

    with monkeypatch.context() as patch:
        patch.setattr(tiny_imagenet, "decode", no_decoding)
        cached = tiny_imagenet.tiny_imagenet(tmp_path)
    assert torch.equal(cached.train_x, first.train_x) and torch.equal(cached.test_y, first.test_y)
    changed = files["val"][0][0]
    write_jpeg(changed, np.random.default_rng(7), grey=True)
    rebuilt = tiny_imagenet.tiny_imagenet(tmp_path)
    assert torch.equal(rebuilt.test_x[0], pil_pixels(changed)) and not torch.equal(rebuilt.test_x[0], first.test_x[0])


def test_the_zip_is_extracted_when_only_it_is_there(tmp_path: Path) -> None:
    write_tiny_imagenet(tmp_path / "tree")
    shutil.make_archive(str(tmp_path / "tiny-imagenet-200"), "zip", tmp_path / "tree", "tiny-imagenet-200")
    splits = tiny_imagenet.tiny_imagenet(tmp_path)
    assert splits.train_x.shape == (6, 3, 64, 64) and (tmp_path / "tiny-imagenet-200" / "wnids.txt").is_file()


def test_missing_or_malformed_data_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200.zip.*cs231n"):
        tiny_imagenet.tiny_imagenet(tmp_path)
    files = write_tiny_imagenet(tmp_path)
    write_jpeg(files["train"][0][0], np.random.default_rng(1), side=32)
    with pytest.raises(ValueError, match=f"{files['train'][0][0].name} is \\(32, 32\\) pixels"):
        tiny_imagenet.tiny_imagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn00000000\n")
    with pytest.raises(ValueError, match="line 1.*names no wnid"):
        tiny_imagenet.tiny_imagenet(tmp_path)


@pytest.mark.parametrize("model", [{"name": "kwl", "layer": "aol"}, {"name": "sll_resnet", "size": "tiny"}])
def test_lbdn_models_take_64_pixel_images(tmp_path: Path, model: dict) -> None:
    write_tiny_imagenet(tmp_path)
    data = load_data(DataConfig("tiny_imagenet", root=str(tmp_path)))
    options = {k: v for k, v in model.items() if k != "name"}
    net = MODELS.get(model["name"], "model.name")(data.info, normalized=True, **options).eval()
    assert net(data.test_x.float() / 255).shape == (4, 200)
