"""What every Lipschitz-bounded model shares: mean-only input centring (a shift, so the bound
holds in pixel units), the last-layer-normalized (LLN) head, and `lipschitz_bound()`, which
certification reads.

A certified family's bound is gamma by construction (sqrt(gamma) scales on the first and the
last layer). A plain network's is measured: the product of its layers' exact operator norms
(SVD of a linear weight; for a zero-padded convolution, the largest singular value over the
frequencies of a circular grid large enough to hold it without wrap-around), which is an upper
bound, so certificates stay sound.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.core.layers import kernel_spectrum
from trainables.core.spectral import record_input_shapes

LIPSCHITZ_MODELS: set[str] = set()  # registered models that certification can read


class Center(nn.Module):
    """x - mean per channel: no division by the std, which would scale the bound."""

    def __init__(self, mean: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x - self.mean


class NormalizedLinear(nn.Linear):
    """The LLN head: each class's weight row scaled to unit l2 norm."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1), self.bias)


def operator_norm(layer: nn.Conv2d | nn.Linear, input_shape: tuple[int, ...]) -> float:
    """An upper bound on the l2 operator norm of the layer's linear part (exact for linear)."""
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(layer.weight.detach().double(), ord=2))
    size = max(input_shape[1:]) + layer.weight.shape[-1] - 1
    spectrum = kernel_spectrum(layer.weight.detach().double(), size)
    return float(torch.linalg.matrix_norm(spectrum, ord=2).max())


class LipschitzNet(nn.Module):
    """A classifier with a known l2 Lipschitz bound. `head`: `plain` (margin certificate
    sqrt2 * bound * eps) or `lln` (per-pair certificate with the normalized last rows)."""

    def __init__(self, body: nn.Sequential, head: str, gamma: float | None, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.gamma = gamma
        self.input_shape = input_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def lipschitz_bound(self) -> float:
        """gamma for a certified family; the product of measured layer norms for plain ones
        (of the features before an LLN head)."""
        if self.gamma is not None:
            return self.gamma
        probe = torch.zeros(1, *self.input_shape, device=next(self.parameters()).device)
        shapes = record_input_shapes(self.body, probe)
        layers = dict(self.body.named_modules())
        skip = {n for n, m in layers.items() if isinstance(m, NormalizedLinear)}
        return math.prod(operator_norm(layers[name], shape) for name, shape in shapes.items() if name not in skip)

    def last_weight(self) -> Tensor:
        """The LLN head's normalized rows."""
        return F.normalize(self.body[-1].weight, dim=1)
