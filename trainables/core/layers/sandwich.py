"""Sandwich layers (Wang & Manchester 2023, LBDN): from Q = cayley(alpha W / ||W||) = [A | B],
y = sqrt2 A^T Psi relu(sqrt2 Psi^-1 B (s x) + b) is 1-Lipschitz in x (times s) for any W, psi, b.
The convolution applies the same per frequency of a circular convolution (FFT)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.core.layers import LAYERS, CayleyConv, CayleyLinear, LayerFamily, apply_spectrum

SQRT2 = 2 ** 0.5


class SandwichFc(CayleyLinear):
    def __init__(self, fin: int, fout: int, scale: float = 1.0) -> None:
        super().__init__(fout, fin + fout, scale)
        self.psi = nn.Parameter(torch.zeros(fout))

    def forward(self, x: Tensor) -> Tensor:
        q = self.weights()
        fout = q.shape[0]
        h = F.linear(self.scale * x, q[:, fout:]) * (SQRT2 * torch.exp(-self.psi)) + self.bias
        return SQRT2 * F.relu(h) * torch.exp(self.psi) @ q[:, :fout]


class SandwichLin(CayleyLinear):
    """The last layer: y = B (s x) + b."""

    def __init__(self, fin: int, fout: int, scale: float = 1.0) -> None:
        super().__init__(fout, fin + fout, scale)

    def forward(self, x: Tensor) -> Tensor:
        q = self.weights()
        return F.linear(self.scale * x, q[:, q.shape[0]:], self.bias)


class SandwichConv(CayleyConv):
    """Per frequency f of the n x n input: Q[f] = cayley(alpha W[f] / ||W||) = [A[f] | B[f]], then
    h = irfft2(sqrt2 Psi^-1 B x^) + b, y = irfft2(sqrt2 A^H Psi rfft2(relu(h))). Stride 2:
    space-to-depth first (4 cin channels at n / 2), with a 1 x 1 kernel as the reference."""

    def __init__(self, cin: int, cout: int, size: int, stride: int = 1, scale: float = 1.0,
                 kernel_size: int = 3) -> None:
        super().__init__(cin, cout, size, stride, scale, kernel_size, extra_in=cout)
        self.psi = nn.Parameter(torch.zeros(cout))

    def forward(self, x: Tensor) -> Tensor:
        q = self.weights()
        cout = q.shape[1]
        psi = self.psi[:, None, None]
        h = apply_spectrum(q[:, :, cout:], self.scaled_input(x)) * (SQRT2 * torch.exp(-psi)) + self.bias[:, None, None]
        return SQRT2 * apply_spectrum(q[:, :, :cout].conj().transpose(-2, -1), F.relu(h) * torch.exp(psi))


LAYERS.register("sandwich")(LayerFamily(fc=SandwichFc, lin=SandwichLin, conv=SandwichConv, fc_width=512))
