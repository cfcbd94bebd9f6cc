"""The strong attacks, from a kept library: adv-lib's APGD, APGD-T, FAB (untargeted and FAB-T),
FMN and DDN, and the project's Square (adv-lib has none), each as
`attack(model, inputs, labels, eps=, norm=, **kw) -> adversarial inputs` on [0, 1] inputs.

adv-lib is imported on first use: importing it takes seconds (it loads visdom), which a spec
check or a search trial that never runs a strong attack should not pay.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from trainables.core.evaluation.base import NORMS
from trainables.core.square import square

StrongAttack = Callable[..., torch.Tensor]
TARGETS = 9  # AutoAttack's targeted attacks try the 9 most likely other classes


def adv_lib() -> object:
    import adv_lib.attacks

    return adv_lib.attacks


def apgd_ce(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
            n_iter: int = 100, restarts: int = 1) -> torch.Tensor:
    """APGD on the cross-entropy (AutoAttack's first attack)."""
    return adv_lib().apgd(model, inputs, labels, eps=eps, norm=NORMS[norm], n_iter=n_iter, n_restarts=restarts,
                          loss_function="ce")


def apgd_t(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
           n_iter: int = 100, restarts: int = 1) -> torch.Tensor:
    """APGD on the targeted DLR loss, towards each of the most likely other classes in turn."""
    classes = model(inputs[:1]).shape[1]
    return adv_lib().apgd_targeted(model, inputs, labels, eps=eps, norm=NORMS[norm], n_iter=n_iter,
                                   n_restarts=restarts, loss_function="dlr", num_targets=min(TARGETS, classes - 1))


def fab_t(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps: float | torch.Tensor, norm: str,
          n_iter: int = 100, restarts: int = 1) -> torch.Tensor:
    """FAB-T: FAB towards each of the most likely other classes (a minimum-norm attack; the
    cascade keeps what lands within eps)."""
    classes = model(inputs[:1]).shape[1]
    return adv_lib().fab(model, inputs, labels, norm=NORMS[norm], n_iter=n_iter,
                         restarts=min(TARGETS, classes - 1), targeted_restarts=True)


def square_attack(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, eps: float, norm: str,
                  n_queries: int = 5000, seed: int = 0) -> torch.Tensor:
    """Square, 5,000 queries by default (black box)."""
    return square(model, inputs, labels, eps=eps, norm=norm, n_queries=n_queries, seed=seed)


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
