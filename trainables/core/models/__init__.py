"""Models by name. Every model takes inputs in [0, 1] and normalizes inside, so epsilons are in
pixel units. A model module registers a factory `(info: DatasetInfo, **options) -> nn.Module`;
its keyword options are what a spec's `model:` section may set."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trainables.core.data import DatasetInfo
from trainables.core.registry import ConfigError, Registry
from trainables.core.schema import NamedEntry, require

ModelFactory = Callable[..., nn.Module]
MODELS: Registry[ModelFactory] = Registry("model")


class Normalize(nn.Module):
    """(x - mean) / std per channel, as the first layer of every model. The constants are rebuilt
    from their decimal values whenever the module changes dtype or device, so a float64 copy holds
    0.2507 and not float32's nearest number (reference checks compare logits to 1e-9)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], persistent_std: bool = True) -> None:
        super().__init__()
        self.constants = (tuple(mean), tuple(std))
        self.register_buffer("mean", self.exact(self.constants[0], torch.float32, None))
        self.register_buffer("std", self.exact(self.constants[1], torch.float32, None), persistent=persistent_std)

    @staticmethod
    def exact(values: tuple[float, ...], dtype: torch.dtype, device: torch.device | None) -> torch.Tensor:
        return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)

    def _apply(self, fn: Callable, recurse: bool = True) -> nn.Module:
        super()._apply(fn, recurse)
        for name, values in zip(("mean", "std"), self.constants, strict=True):
            setattr(self, name, self.exact(values, getattr(self, name).dtype, getattr(self, name).device))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def model_options(name: str) -> dict[str, inspect.Parameter]:
    """The keyword options of a registered model (its factory's parameters after `info`)."""
    params = list(inspect.signature(MODELS.get(name)).parameters.values())[1:]
    return {p.name: p for p in params}


class ModelConfig(NamedEntry):
    """`{name: cw_cnn, widths: mnist}`: the model's name and its options."""

    REGISTRY = MODELS

    @classmethod
    def checked_options(cls, name: str, options: dict[str, Any], path: str) -> dict[str, Any]:
        MODELS.get(name, f"{path}.name")
        allowed = model_options(name)
        for key in options:
            require(key in allowed, f"{path}.{key}",
                    f"unknown option of model {name!r}; allowed: {', '.join(allowed) or '(none)'}")
        return options


def build_model(config: ModelConfig, info: DatasetInfo) -> nn.Module:
    """The model `config.name` for inputs described by `info`."""
    try:
        return MODELS.get(config.name, "model.name")(info, **config.options)
    except (TypeError, ValueError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"model: {config.name} with {config.options} cannot be built: {err}") from err


def check_model(config: ModelConfig, info: DatasetInfo) -> None:
    """Build the model on the meta device (no memory, no arithmetic), so that every option value
    is checked where its builder checks it, when a spec is loaded instead of inside a trial."""
    with torch.device("meta"):
        build_model(config, info)


from trainables.core.models import (  # noqa: E402,F401  (register)
    cw_cnn,
    dnn,
    kwl,
    lipconvnet,
    mlp,
    resnet,
    sll_resnet,
    toy,
    vgg,
)
