"""Training methods by name. A method declares its hyperparameters once (`params`), computes the
training loss of a batch, and may act after each optimizer step and carry state that is saved in
every checkpoint. One module per method registers it.

Constraints (spectral-norm projection or penalty) combine with any one method: the name
`pgd_l2+sn_projection` trains pgd_l2's loss plus the constraint's penalty and applies the
constraint after every step; its hyperparameters are the union of both declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from trainables.core.data import DataBundle
from trainables.core.params import Param
from trainables.core.registry import ConfigError, Registry


@dataclass
class StepContext:
    """Where training is when a method is called."""

    epoch: int
    step: int
    generator: torch.Generator


class Method:
    """Base class. Subclasses set `params` (name -> Param) and `source` (where the method comes
    from); the values chosen for a run are in `self.hp`, defaults filled in. A constraint
    (`constraint = True`) adds `penalty` to another method's loss and may act in `after_step`."""

    params: ClassVar[dict[str, Param]] = {}
    source: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ()  # its code bases: search_spaces/FAMILY.yaml names it
    constraint: ClassVar[bool] = False
    double_backprop: ClassVar[bool] = False  # its loss differentiates an input gradient

    def __init__(self, **hparams: Any) -> None:
        self.hp = {name: hparams.get(name, param.default) for name, param in self.params.items()}

    def setup(self, data: DataBundle) -> None:
        """Called once before training (and before a resume restores the state), with the data
        on the training device: for methods that precompute from the training set."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def penalty(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor | float:
        """A constraint's term added to the method's loss."""
        return 0.0

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


def method_classes(name: str, key: str) -> list[type[Method]]:
    """The classes a method name stands for: one method, then any constraints (`a+b+c`)."""
    parts = name.split("+")
    classes = [METHODS.get(part, key) for part in parts]
    constraints = [n for n in METHODS if METHODS.get(n).constraint]
    if classes[0].constraint:
        raise ConfigError(f"{key}: {parts[0]} is a constraint; put a method first, e.g. clean+{parts[0]}")
    for part, cls in zip(parts[1:], classes[1:], strict=True):
        if not cls.constraint:
            raise ConfigError(f"{key}: {part} is a method; one method combines with constraints: {constraints}")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"{key}: {name} names a part twice")
    return classes


def double_backprop(name: str) -> bool:
    """Does method `name` (or a constraint it combines with) backpropagate through an input gradient?"""
    return any(cls.double_backprop for cls in method_classes(name, "method"))


def method_params(name: str, key: str) -> dict[str, Param]:
    """The hyperparameter declarations of a (possibly combined) method name."""
    merged: dict[str, Param] = {}
    for cls in method_classes(name, key):
        clash = set(merged) & set(cls.params)
        if clash:
            raise ConfigError(f"{key}: the parts of {name} both declare {sorted(clash)}")
        merged.update(cls.params)
    return merged


def check_hparams(name: str, hparams: dict[str, Any], path: str) -> dict[str, Any]:
    """`hparams` of method `name` checked against its declaration, with defaults filled in."""
    declared = method_params(name, path)
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


class Combined(Method):
    """A method with constraints: its loss plus their penalties, then their after-step actions."""

    def __init__(self, parts: list[Method]) -> None:
        self.parts = parts
        self.hp = {k: v for part in parts for k, v in part.hp.items()}

    def setup(self, data: DataBundle) -> None:
        for part in self.parts:
            part.setup(data)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        total = self.parts[0].loss(model, x, y, ctx)
        for constraint in self.parts[1:]:
            total = total + constraint.penalty(model, x, ctx)
        return total

    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        for part in self.parts:
            part.after_step(model, ctx)

    def optimizer_weight_decay(self) -> float:
        return self.parts[0].optimizer_weight_decay()

    def state_dict(self) -> dict[str, Any]:
        return {str(i): part.state_dict() for i, part in enumerate(self.parts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, part in enumerate(self.parts):
            part.load_state_dict(state[str(i)])


def build_method(name: str, hparams: dict[str, Any]) -> Method:
    """The method `name` (possibly `method+constraint`) with `hparams`, checked."""
    checked = check_hparams(name, hparams, f"method {name}")
    classes = method_classes(name, "method")
    parts = [cls(**{k: checked[k] for k in cls.params}) for cls in classes]
    return parts[0] if len(parts) == 1 else Combined(parts)


from trainables.core.methods import (  # noqa: E402,F401  (register the methods)
    adv_perturbation,
    adversarial_mixture,
    clean,
    gradient_penalty,
    lipschitz,
    loss_gradients,
    lrc_augment,
    pgd,
    sgr,
    spectral_norm,
)
