"""Structured gradient regularization and its special case, gradient-norm regularization
(Roth, Lucchi, Nowozin, Hofmann 2018; ../shared/specs/sgr.md).

loss = mean_i CE(f(x_i), y_i) + lambda * Omega, Omega = 1/2 mean_i g_i^T Sigma g_i, with g_i the
per-example input gradient of the cross-entropy (double backprop). `gn`: Sigma = I. `sgr`: Sigma
the raw second moments of adversarial perturbations, a running estimate (Algorithm 1) refreshed
every `update_every` steps from the batch's perturbations, or a fixed Sigma (the training set's
covariance, or the synthetic exponential one of the LRC attack).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainables.core.attacks import pgd_linf
from trainables.core.covariance import (
    Covariance,
    DisplacementCovariance,
    FullCovariance,
    exponential_functions,
    num_radii,
)
from trainables.core.data import DataBundle, eval_batches
from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.methods.loss_gradients import loss_and_input_gradient
from trainables.core.params import Param
from trainables.core.registry import ConfigError

LAMBDA = Param("float", 0.1, low=1e-3, high=10.0, log=True, minimum=0.0, doc="weight of Omega")
SOURCES = ("grad", "sign", "fgsm", "pgd")
COVARIANCES = ("running", "data", "exponential", "identity")


def quadratic_form(g: torch.Tensor, sigma_g: torch.Tensor) -> torch.Tensor:
    """1/2 mean_i g_i^T (Sigma g)_i."""
    return 0.5 * (g * sigma_g).flatten(1).sum(1).mean()


@METHODS.register("gn")
class GradientNorm(Method):
    families = ("sgr",)
    double_backprop = True
    params = {"lambda": LAMBDA}
    source = "sgr (GN baseline): CE + lambda/2 mean ||grad_x CE_i||^2, SGR with Sigma = I"

    def penalty_terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor,
                      ctx: StepContext) -> torch.Tensor:
        """Omega for the per-example input gradients g."""
        return quadratic_form(g, g)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        ce, g = loss_and_input_gradient(model, x, y)
        return ce + self.hp["lambda"] * self.penalty_terms(model, x, y, g, ctx)


@METHODS.register("sgr")
class StructuredGradient(GradientNorm):
    params = {
        "lambda": LAMBDA,
        "beta": Param("float", 0.1, low=0.01, high=0.5, log=True, minimum=1e-6, maximum=1.0,
                      doc="running estimate: weight of the newest batch, in (0, 1]"),
        "source": Param("categorical", "sign", allowed=SOURCES,
                        doc="perturbations: normalized loss gradient, its sign, FGSM, or linf PGD"),
        "eps": Param("float", 0.1, minimum=0.0, doc="fgsm / pgd sources: linf radius"),
        "steps": Param("int", 5, minimum=1, doc="pgd source: steps"),
        "update_every": Param("int", 1, minimum=1, doc="refresh the running estimate every N steps"),
        "standardize": Param("bool", True, doc="scale Sigma to mean diagonal 1 (lambda: noise-to-signal)"),
        "centered": Param("bool", True, doc="false: add the first-order term mean_i grad_x CE_i . mu"),
        "covariance": Param("categorical", "running", allowed=COVARIANCES,
                            doc="running estimate, the training set's covariance, exponential, or I"),
        "zeta": Param("float", 4.0, minimum=0.01, doc="exponential covariance: decay length, pixels"),
        "sigma_form": Param("categorical", "auto", allowed=("auto", "full", "displacement"),
                            doc="auto: displacement for images, full d x d otherwise"),
    }
    source = "sgr: structured gradient regularization, Sigma from adversarial perturbations"

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.covariance: Covariance | None = None

    def make_covariance(self, shape: tuple[int, ...], device: torch.device) -> Covariance | None:
        """Sigma's representation for inputs of `shape`, fixed ones filled in (None: identity)."""
        kind = self.hp["covariance"]
        if kind == "identity":
            return None
        form = self.hp["sigma_form"]
        if form == "auto":
            form = "displacement" if len(shape) == 3 and shape[1] > 1 and shape[2] > 1 else "full"
        covariance = (DisplacementCovariance if form == "displacement" else FullCovariance)(shape, device)
        if kind == "exponential":
            functions = exponential_functions(num_radii(shape), self.hp["zeta"], device)
            covariance.set_function(*(f.float() for f in functions))
        return covariance

    def setup(self, data: DataBundle) -> None:
        self.covariance = self.make_covariance(data.info.shape, data.train_x.device)
        if self.hp["covariance"] == "data":
            self.covariance.centered_estimate(
                lambda: (x for x, _ in eval_batches(data.train_x, data.train_y, 1000)))

    def perturbations(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor,
                      ctx: StepContext) -> torch.Tensor:
        """The batch's perturbations xi from the chosen source (g: the loss gradients at x)."""
        source, eps = self.hp["source"], self.hp["eps"]
        if source == "grad":
            return g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (g.dim() - 1)))
        if source == "sign":
            return g.sign()
        if source == "fgsm":
            return (x + eps * g.sign()).clamp(0.0, 1.0) - x
        steps = self.hp["steps"]
        with torch.enable_grad():
            return pgd_linf(model, x, y, eps=eps, steps=steps, step_size=2.5 * eps / steps,
                            generator=ctx.generator) - x

    def penalty_terms(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Tensor,
                      ctx: StepContext) -> torch.Tensor:
        if self.covariance is None and self.hp["covariance"] != "identity":
            if self.hp["covariance"] == "data":
                raise ConfigError("covariance: data needs the training set (call setup(data) before training)")
            self.covariance = self.make_covariance(tuple(x.shape[1:]), x.device)
        if self.covariance is None:
            return quadratic_form(g, g)
        if self.hp["covariance"] == "running" and ctx.step % self.hp["update_every"] == 0:
            self.covariance.update(self.perturbations(model, x.detach(), y, g.detach(), ctx), self.hp["beta"])
        scale = 1 / self.covariance.mean_diagonal() if self.hp["standardize"] else 1.0
        omega = quadratic_form(g, self.covariance.apply(g)) * scale
        if not self.hp["centered"]:
            mean = self.covariance.mean.to(g.dtype) * (scale ** 0.5 if self.hp["standardize"] else 1.0)
            omega = omega + (g * mean).flatten(1).sum(1).mean()
        return omega

    def state_dict(self) -> dict[str, Any]:
        return {} if self.covariance is None or self.covariance.stats is None else dict(self.covariance.stats)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.covariance.stats = dict(state)
