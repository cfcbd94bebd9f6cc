"""Orthogon layers (Cayley orthogonal layers, Trockman & Kolter 2021): Q = cayley(alpha W / ||W||)
is orthogonal, y = relu(Q (s x) + b); the convolution is orthogonal per frequency (FFT)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.core.layers import (
    LAYERS,
    Cached,
    LayerFamily,
    apply_spectrum,
    cayley,
    kernel_spectrum,
    linear_init,
    space_to_depth,
)


class OrthogonLin(Cached):
    def __init__(self, fin: int, fout: int, scale: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fout, fin))
        self.bias = nn.Parameter(torch.empty(fout))
        linear_init(self.weight, self.bias)
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())
        self.scale = scale
        self.activation = activation

    def parameterize(self) -> Tensor:
        return cayley(self.alpha * self.weight / self.weight.norm())

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(self.scale * x, self.weights(), self.bias)
        return F.relu(y) if self.activation else y


def orthogon_fc(fin: int, fout: int, scale: float = 1.0) -> OrthogonLin:
    return OrthogonLin(fin, fout, scale, activation=True)


class OrthogonConv(Cached):
    def __init__(self, cin: int, cout: int, size: int, stride: int = 1, scale: float = 1.0,
                 kernel_size: int = 3, activation: bool = True) -> None:
        super().__init__()
        self.stride = stride
        if stride == 2:
            cin, size, kernel_size = 4 * cin, size // 2, max(1, kernel_size // 2)
        self.size = size
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(cout))
        linear_init(self.weight, self.bias)
        self.alpha = nn.Parameter(kernel_spectrum(self.weight.detach(), size).norm().clone())
        self.scale = scale
        self.activation = activation

    def parameterize(self) -> Tensor:
        spectrum = kernel_spectrum(self.weight, self.size)
        return cayley(self.alpha * spectrum / spectrum.norm())

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            x = space_to_depth(x)
        y = apply_spectrum(self.weights(), self.scale * x) + self.bias[:, None, None]
        return F.relu(y) if self.activation else y


LAYERS.register("orthogon")(LayerFamily(fc=orthogon_fc, lin=OrthogonLin, conv=OrthogonConv))
