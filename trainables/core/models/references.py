"""Input statistics as each reference code base has them. A model family normalizes its inputs
with its reference's constants where that code has them for the data set, else with the data
set's true statistics (`DatasetInfo`). Inside a Lipschitz model the normalization's 1 / min(std)
enters the bound, so these constants decide the certified radii.

- kernel_reg (`vgg`, `resnet`): CIFAR-10's mean with std (0.2023, 0.1994, 0.2010), the figure its
  `model.py` uses (the mean of per-image stds, not the training split's std).
- SOC and improved_l2_robustness (`lipconvnet`): one scalar std, 0.2507 (the mean of CIFAR-10's
  three channel stds), and CIFAR-10's mean, for CIFAR-10 and CIFAR-100 alike (`utils.py`,
  `lip_convnets.py`).
- acfr/LBDN (`kwl`, `dnn`, `sll_resnet`; `dataset.py`): per-channel std under `normalized`;
  CIFAR-10's equal the true figures, CIFAR-100's differ from them in the fourth decimal, and
  Tiny-ImageNet uses ImageNet's.
"""

from __future__ import annotations

from trainables.core.data import DatasetInfo

Stats = tuple[tuple[float, ...], tuple[float, ...]]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)

KERNEL_REG: dict[str, Stats] = {"cifar10": (CIFAR10_MEAN, (0.2023, 0.1994, 0.2010))}
SOC: dict[str, Stats] = {"cifar10": (CIFAR10_MEAN, (0.2507,)), "cifar100": (CIFAR10_MEAN, (0.2507,))}
LBDN: dict[str, Stats] = {
    "cifar10": (CIFAR10_MEAN, (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2675, 0.2565, 0.2761)),
    "tiny_imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def reference_stats(info: DatasetInfo, reference: dict[str, Stats]) -> Stats:
    """(mean, std) for `info`'s data set: the reference's constants where it has them, else the
    data set's true training-split statistics."""
    return reference.get(info.name, (info.mean, info.std))
