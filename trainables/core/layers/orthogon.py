"""Orthogon layers (Cayley orthogonal layers, Trockman & Kolter 2021): Q = cayley(alpha W / ||W||)
is orthogonal, y = relu(Q (s x) + b); the convolution is orthogonal per frequency (FFT)."""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from trainables.core.layers import LAYERS, CayleyConv, CayleyLinear, LayerFamily, apply_spectrum


class OrthogonLin(CayleyLinear):
    def __init__(self, fin: int, fout: int, scale: float = 1.0, activation: bool = False) -> None:
        super().__init__(fout, fin, scale)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(self.scale * x, self.weights(), self.bias)
        return F.relu(y) if self.activation else y


def orthogon_fc(fin: int, fout: int, scale: float = 1.0) -> OrthogonLin:
    return OrthogonLin(fin, fout, scale, activation=True)


class OrthogonConv(CayleyConv):
    def __init__(self, cin: int, cout: int, size: int, stride: int = 1, scale: float = 1.0,
                 kernel_size: int = 3, activation: bool = True) -> None:
        super().__init__(cin, cout, size, stride, scale, kernel_size, extra_in=0)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        y = apply_spectrum(self.weights(), self.scaled_input(x)) + self.bias[:, None, None]
        return F.relu(y) if self.activation else y


LAYERS.register("orthogon")(LayerFamily(fc=orthogon_fc, lin=OrthogonLin, conv=OrthogonConv))
