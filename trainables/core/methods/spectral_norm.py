"""Spectral-norm control (kernel_reg), constraints that combine with any method
(`pgd_l2+sn_projection`, `clean+sn_penalty`). Both act on every conv and linear weight.

`sn_projection`: after every optimizer step, clip each weight's singular values at
tau_t = tau * (1 + 4 exp(-t / kappa)) (t the epoch, numbered from 1 as in the reference: 3.43 tau
at first with kappa 2, decaying to tau). In
`operator` mode a convolution is rescaled so that its true operator norm is at most tau_t.
`sn_penalty`: lambda_sn * sum_layers sigma_1^2, sigma_1 = u^T W v with u, v from `iterations`
power iterations warm-started from a persistent vector per layer (saved in checkpoints), or from
an exact SVD (`svd: true`; in operator mode: power iteration run to convergence).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param
from trainables.core.spectral import (
    clip_singular_values,
    layer_maps,
    power_iteration,
    record_input_shapes,
    spectral_layers,
)

SN_MODE = Param("categorical", "reshaped", allowed=("reshaped", "operator"),
                doc="reshaped: the reference's W.view(out, -1); operator: the conv's true norm")
CONVERGED_ITERATIONS = 500  # with a tolerance of 10 machine epsilons on sigma


class SpectralControl(Method):
    """What both constraints share: the layers' input sizes and persistent power-iteration vectors."""
    families = ("kernel_reg",)

    constraint = True

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.vectors: dict[str, torch.Tensor] = {}
        self.input_shapes: dict[str, tuple[int, ...]] | None = None

    def exact(self, layer: nn.Module) -> bool:
        """Whether the layer's norm here is a matrix norm (an SVD gives it exactly)."""
        return isinstance(layer, nn.Linear) or self.hp["sn_mode"] == "reshaped"

    def prepare(self, model: nn.Module, x: torch.Tensor) -> None:
        if self.hp["sn_mode"] == "operator" and self.input_shapes is None:
            self.input_shapes = record_input_shapes(model, x)

    def top_vectors(self, name: str, layer: nn.Module, iterations: int, converge: bool = False) -> tuple:
        """(u, v) for the layer, warm-started from (and updating) its persistent vector; with
        `converge`, iterated until sigma is stable to 10 machine epsilons."""
        tol = 10 * torch.finfo(layer.weight.dtype).eps if converge else 0.0
        shapes = self.input_shapes or {}
        forward, adjoint, shape = layer_maps(layer, layer.weight, self.hp["sn_mode"], shapes.get(name))
        start = self.vectors.get(name)
        if start is None:
            start = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=layer.weight.dtype)
        u, v = power_iteration(forward, adjoint, start.to(layer.weight.device), iterations, tol)
        self.vectors[name] = v
        return u, v

    def sigma(self, name: str, layer: nn.Module, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """u^T A v with A built from the live weight: differentiable in it."""
        shapes = self.input_shapes or {}
        forward = layer_maps(layer, layer.weight, self.hp["sn_mode"], shapes.get(name))[0]
        return (u * forward(v)).sum()

    def state_dict(self) -> dict[str, Any]:
        return {"vectors": {k: v.detach().cpu() for k, v in self.vectors.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vectors = dict(state["vectors"])


@METHODS.register("sn_projection")
class SnProjection(SpectralControl):
    params = {
        "tau": Param("float", 0.5, low=0.3, high=3.0, log=True, minimum=0.0, doc="final radius"),
        "kappa": Param("float", 2.0, low=0.5, high=100.0, log=True, minimum=1e-9, doc="decay, in epochs"),
        "sn_mode": SN_MODE,
    }
    source = "kernel_reg (--project_sn): singular values clipped after every step"

    def radius(self, epoch: int) -> float:
        """The radius in (0-based) `epoch`: the reference numbers epochs from 1, so the first
        epoch's is tau (1 + 4 exp(-1 / kappa)), 3.43 tau at kappa 2."""
        return self.hp["tau"] * (1 + 4 * math.exp(-(epoch + 1) / self.hp["kappa"]))

    def penalty(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> float:
        self.prepare(model, x)
        return 0.0

    @torch.no_grad()
    def after_step(self, model: nn.Module, ctx: StepContext) -> None:
        radius = self.radius(ctx.epoch)
        for name, layer in spectral_layers(model).items():
            if self.exact(layer):
                layer.weight.copy_(clip_singular_values(layer.weight, radius))
                continue
            u, v = self.top_vectors(name, layer, CONVERGED_ITERATIONS, converge=True)
            sigma = self.sigma(name, layer, u, v)
            layer.weight.mul_((radius / sigma).clamp(max=1.0))  # on the device: no host sync per step


@METHODS.register("sn_penalty")
class SnPenalty(SpectralControl):
    params = {
        "lambda_sn": Param("float", 0.01, low=1e-4, high=1.0, log=True, minimum=0.0, doc="penalty weight"),
        "iterations": Param("int", 2, minimum=1, doc="power iterations per step (the reference's nb_it)"),
        "svd": Param("bool", False, doc="exact top singular vectors instead of power iteration"),
        "sn_mode": SN_MODE,
    }
    source = "kernel_reg (--penalize_sn): lambda_sn * sum of squared spectral norms"

    def top(self, name: str, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.hp["svd"]:
            return self.top_vectors(name, layer, self.hp["iterations"])
        if not self.exact(layer):
            return self.top_vectors(name, layer, CONVERGED_ITERATIONS, converge=True)
        with torch.no_grad():
            u, _, vh = torch.linalg.svd(layer.weight.reshape(layer.weight.shape[0], -1), full_matrices=False)
        return u[:, 0], vh[0]

    def penalty(self, model: nn.Module, x: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        self.prepare(model, x)
        total = sum(self.sigma(name, layer, *self.top(name, layer)).pow(2)
                    for name, layer in spectral_layers(model).items())
        return self.hp["lambda_sn"] * total
