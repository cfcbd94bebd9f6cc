"""Named presets: data, model, train and eval sections that a run or study spec names with
`preset: NAME` and overrides key by key (the spec's own keys win, nested mappings merge).

The kernel_reg presets follow the reference's experiment.py and main.py: CIFAR-10 (the first
1000 / 5000 of the seeded shuffle, validation on the last 10k, or all 50k), VGG-11 (lr 0.05) or
ResNet-18 (lr 0.1) without batch norm, SGD momentum 0.9, batch 128 (test 256), lr halved every
40 epochs on subsets and 30 on the full set, 501 epochs, random crop 4 + flip unless `_no_aug`.
"""

from __future__ import annotations

import copy
from typing import Any

from trainables.core.registry import ConfigError, Registry

PRESETS: Registry[dict[str, Any]] = Registry("preset")


def kernel_reg_preset(examples: int | None, model: str, augment: bool) -> dict[str, Any]:
    subset = examples is not None
    return {
        "data": {
            "dataset": "cifar10",
            "subset": examples,
            "val": 10000 if subset else 0,
            "augment": {"crop": 4 if augment else 0, "flip": augment},
        },
        "model": {"name": model},
        "train": {
            "epochs": 501,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.05 if model == "vgg11" else 0.1,
            "momentum": 0.9,
            "schedule": {"kind": "step", "step_epochs": 40 if subset else 30, "gamma": 0.5},
        },
        "eval": {"batch_size": 256},
    }


for _data, _examples in (("cifar10small1000", 1000), ("cifar10small5000", 5000), ("cifar10", None)):
    for _short, _model in (("vgg", "vgg11"), ("resnet", "resnet18")):
        PRESETS.register(f"{_data}_{_short}")(kernel_reg_preset(_examples, _model, augment=True))
        PRESETS.register(f"{_data}_{_short}_no_aug")(kernel_reg_preset(_examples, _model, augment=False))


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it, nested mappings merged key by key."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def apply_preset(spec: dict[str, Any]) -> dict[str, Any]:
    """A spec with its `preset` (if any) expanded under its own keys."""
    if "preset" not in spec:
        return spec
    rest = {k: v for k, v in spec.items() if k != "preset"}
    if not isinstance(spec["preset"], str):
        raise ConfigError(f"preset: expected a preset name; presets: {', '.join(PRESETS.names())}")
    return merge(PRESETS.get(spec["preset"], "preset"), rest)
