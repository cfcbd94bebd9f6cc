"""The strong attacks, from a kept library: adv-lib's APGD, APGD-T, FAB (untargeted and FAB-T),
FMN and DDN, each as `attack(model, inputs, labels, eps=, norm=, **kw) -> adversarial inputs`
on [0, 1] inputs (Square, which adv-lib lacks, is the project's `trainables.core.square`).

adv-lib is imported on first use: importing it takes seconds (it loads visdom), which a spec
check or a search trial that never runs a strong attack should not pay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trainables.core.evaluation.base import NORMS

StrongAttack = Callable[..., torch.Tensor]
TARGETS = 9  # AutoAttack's targeted attacks try the 9 most likely other classes


def adv_lib() -> object:
    import adv_lib.attacks

    return adv_lib.attacks


def other_classes(model: nn.Module, inputs: torch.Tensor) -> int:
    """How many classes a targeted attack tries: AutoAttack's 9, or all others when fewer."""
    return min(TARGETS, model(inputs[:1]).shape[1] - 1)


def apgd_ce(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
            n_iter: int = 100) -> torch.Tensor:
    """APGD on the cross-entropy, one restart (AutoAttack's first attack)."""
    return adv_lib().apgd(model, inputs, labels, eps=eps, norm=NORMS[norm], n_iter=n_iter, loss_function="ce")


def apgd_t(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
           n_iter: int = 100) -> torch.Tensor:
    """APGD on the targeted DLR loss, towards each of the most likely other classes in turn."""
    return adv_lib().apgd_targeted(model, inputs, labels, eps=eps, norm=NORMS[norm], n_iter=n_iter,
                                   loss_function="dlr", num_targets=other_classes(model, inputs))


def fab_t(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
          n_iter: int = 100) -> torch.Tensor:
    """FAB-T: FAB towards each of the most likely other classes (a minimum-norm attack, so `eps`
    is not its input: the cascade keeps what lands within it)."""
    return adv_lib().fab(model, inputs, labels, norm=NORMS[norm], n_iter=n_iter,
                         restarts=other_classes(model, inputs), targeted_restarts=True)


def fmn(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, norm: str, steps: int = 100) -> torch.Tensor:
    """Fast Minimum-Norm (Pintor et al. 2021)."""
    return adv_lib().fmn(model, inputs, labels, norm=NORMS[norm], steps=steps)


def ddn(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, norm: str, steps: int = 100) -> torch.Tensor:
    """Decoupled Direction and Norm (Rony et al. 2019), l2 only; no quantization of the output."""
    assert norm == "l2", "DDN minimizes the l2 norm only"
    return adv_lib().ddn(model, inputs, labels, steps=steps, levels=None)


def fab(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, norm: str, steps: int = 100) -> torch.Tensor:
    """FAB, untargeted (Croce & Hein 2020), minimum norm."""
    return adv_lib().fab(model, inputs, labels, norm=NORMS[norm], n_iter=steps)


MIN_NORM_ATTACKS: dict[str, StrongAttack] = {"fmn": fmn, "ddn": ddn, "fab": fab}
MIN_NORM_SUPPORTS = {"fmn": ("l2", "linf"), "ddn": ("l2",), "fab": ("l2", "linf")}
