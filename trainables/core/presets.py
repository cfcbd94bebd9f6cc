"""Named presets: data, model, train and eval sections that a run or study spec names with
`preset: NAME` and overrides key by key (the spec's own keys win, nested mappings merge).

The kernel_reg presets follow the reference's experiment.py and main.py: CIFAR-10 (the first
1000 / 5000 of the seeded shuffle, validation on the last 10k, or all 50k), VGG-11 (lr 0.05) or
ResNet-18 (lr 0.1) without batch norm, SGD momentum 0.9, batch 128 (test 256), lr halved every
40 epochs on subsets and 30 on the full set counted from epoch 1 as the reference's StepLR,
stepped before each epoch, counts them (so the first halving follows epoch 39 or 29), 500
epochs (the reference's epochs 1 .. 500 of `--num_epochs 501`), random crop 4 + flip unless
`_no_aug`.
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
            "epochs": 500,
            "batch_size": 128,
            "optimizer": "sgd",
            "lr": 0.05 if model == "vgg11" else 0.1,
            "momentum": 0.9,
            "schedule": {"kind": "step", "step_epochs": 40 if subset else 30, "gamma": 0.5, "epoch_offset": 1},
        },
        "eval": {"batch_size": 256},
    }


for _data, _examples in (("cifar10small1000", 1000), ("cifar10small5000", 5000), ("cifar10", None)):
    for _short, _model in (("vgg", "vgg11"), ("resnet", "resnet18")):
        PRESETS.register(f"{_data}_{_short}")(kernel_reg_preset(_examples, _model, augment=True))
        PRESETS.register(f"{_data}_{_short}_no_aug")(kernel_reg_preset(_examples, _model, augment=False))


LBDN_EPS = [36 / 255, 72 / 255, 108 / 255, 1.0]


LBDN_AUGMENT = {"crop": 4, "pad": "reflect", "flip": True, "color_jitter": [0.1, [0.5, 2.0], [0.3, 2.0], 0.02]}
LBDN_EVAL = {"batch_size": 256, "items": [{"kind": "certified", "eps": LBDN_EPS},
                                          {"kind": "attack", "attack": "pgd_l2", "eps": LBDN_EPS, "steps": 10}],
             "robust_metric": "certified_eps0.1412_acc"}
TOY_EVAL = {"examples": None, "items": [{"kind": "fit"}, {"kind": "certified", "eps": [0.01, 0.05, 0.1]}],
            "robust_metric": "certified_eps0.05_acc"}


def lbdn_preset(dataset: str, model: dict[str, Any], epochs: int, batch_size: int = 256,
                augment: dict[str, Any] | None = None, evaluation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The LBDN reference's training (train.py, main.py): Adam lr 0.01 without weight decay,
    batch 256 (50 for the toy), lr per step 0 -> lr at 40% -> lr / 20 at 80% -> 0; reflect-pad 4
    crop, flip and colour jitter; certified accuracy at 36, 72, 108, 255 /255 every epoch."""
    return {
        "data": {"dataset": dataset, "val": 0, "augment": augment if augment is not None else LBDN_AUGMENT},
        "model": model,
        "train": {"epochs": epochs, "batch_size": batch_size, "optimizer": "adam", "lr": 0.01, "schedule": {
            "kind": "piecewise_linear", "milestones": [0, 0.4 * epochs, 0.8 * epochs, epochs],
            "values": [0.0, 1.0, 0.05, 0.0]}},
        "eval": evaluation or LBDN_EVAL,
    }


# The reference commands: KWL on CIFAR-10 (small, multimargin) and CIFAR-100 (large, xent), the
# SLL Resnet, the DNN certification network (400 epochs, LLN head) and the square-wave toy.
PRESETS.register("lbdn_kwl_cifar10")(lbdn_preset("cifar10", {"name": "kwl", "size": "small"}, 100))
PRESETS.register("lbdn_kwl_cifar100")(lbdn_preset("cifar100", {"name": "kwl", "size": "large"}, 100))
PRESETS.register("lbdn_resnet_cifar10")(lbdn_preset("cifar10", {"name": "sll_resnet", "size": "small"}, 100))
PRESETS.register("lbdn_dnn_cifar100")(lbdn_preset("cifar100", {"name": "dnn", "head": "lln"}, 400))
# Tiny-ImageNet (LBDN Tables 2-4): KWL and the SLL Resnet with gamma 2 on normalized inputs for
# 100 epochs; the DNN certification network with gamma 1 for 400 epochs.
PRESETS.register("lbdn_kwl_tiny_imagenet")(
    lbdn_preset("tiny_imagenet", {"name": "kwl", "size": "small", "gamma": 2.0, "normalized": True}, 100))
PRESETS.register("lbdn_resnet_tiny_imagenet")(
    lbdn_preset("tiny_imagenet", {"name": "sll_resnet", "size": "small", "gamma": 2.0, "normalized": True}, 100))
PRESETS.register("lbdn_dnn_tiny_imagenet")(lbdn_preset("tiny_imagenet", {"name": "dnn", "head": "lln"}, 400))
PRESETS.register("lbdn_toy_square_wave")(
    lbdn_preset("square_wave", {"name": "toy"}, 200, batch_size=50, augment={}, evaluation=TOY_EVAL))


SOC_EPS = [36 / 255, 72 / 255, 108 / 255, 0.5, 1.0, 1.5]


def soc_preset(dataset: str, epochs: int = 200) -> dict[str, Any]:
    """Singla & Feizi's training (improved_l2_robustness, train_robust.py): LipConvNet-N, SGD lr
    0.1, momentum 0.9, batch 128, lr divided by 10 at 50% and 75% of training; certified
    accuracy at 36, 72, 108 /255 and 0.5, 1, 1.5. The reference decays the convolution weights
    only (5e-4), which the lipschitz method leaves to the spec (weight decay applies to all)."""
    half, three_quarters = epochs / 2, 3 * epochs / 4
    return {
        "data": {"dataset": dataset, "val": 0, "augment": {"crop": 4, "flip": dataset != "fashion_mnist"}},
        "model": {"name": "lipconvnet", "depth": 20, "fast": True},
        "train": {"epochs": epochs, "batch_size": 128, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "schedule": {
            "kind": "piecewise_linear",
            "milestones": [0, half, half + 1e-3, three_quarters, three_quarters + 1e-3, epochs],
            "values": [1.0, 1.0, 0.1, 0.1, 0.01, 0.01]}},
        "eval": {"batch_size": 256, "items": [{"kind": "certified", "eps": SOC_EPS},
                                              {"kind": "attack", "attack": "pgd_l2", "eps": SOC_EPS[:3], "steps": 10}],
                 "robust_metric": "certified_eps0.1412_acc"},
    }


PRESETS.register("soc_cifar10")(soc_preset("cifar10"))
PRESETS.register("soc_cifar100")(soc_preset("cifar100"))
PRESETS.register("soc_fashion_mnist")(soc_preset("fashion_mnist", epochs=60))


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
