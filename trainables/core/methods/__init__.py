"""Training methods by name. A method declares its hyperparameters once (`params`), computes the
training loss of a batch, and may act after each optimizer step and carry state that is saved in
every checkpoint. One module per method registers it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from trainables.core.params import Param
from trainables.core.registry import ConfigError, Registry


@dataclass
class StepContext:
    """Where training is when a method is called."""

    epoch: int
    step: int
    generator: torch.Generator


class Method:
    """Base class: plain cross-entropy unless a subclass says otherwise.

    Subclasses set `params` (name -> Param) and `source` (where the method comes from); the
    values chosen for a run are in `self.hp`, defaults filled in.
    """

    params: ClassVar[dict[str, Param]] = {}
    source: ClassVar[str] = ""

    def __init__(self, **hparams: Any) -> None:
        self.hp = {name: hparams.get(name, param.default) for name, param in self.params.items()}

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        """Called after every optimizer step (projections live here)."""

    def optimizer_weight_decay(self) -> float:
        """The optimizer's weight decay for this method."""
        return 0.0

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""


METHODS: Registry[type[Method]] = Registry("method")


def check_hparams(name: str, hparams: dict[str, Any], path: str) -> dict[str, Any]:
    """`hparams` of method `name` checked against its declaration, with defaults filled in."""
    declared = METHODS.get(name, path).params
    unknown = sorted(set(hparams) - set(declared))
    if unknown:
        raise ConfigError(
            f"{path}.{unknown[0]}: unknown hyperparameter of {name}; allowed: "
            f"{', '.join(declared) or '(none)'}"
        )
    return {
        key: param.check_value(hparams[key], f"{path}.{key}") if key in hparams else param.default
        for key, param in declared.items()
    }


def build_method(name: str, hparams: dict[str, Any]) -> Method:
    """The method `name` with `hparams` (checked; undeclared ones are an error)."""
    return METHODS.get(name, "method")(**check_hparams(name, hparams, f"method {name}"))


from trainables.core.methods import clean, loss_gradl2, pgd_l2  # noqa: E402,F401  (register)
