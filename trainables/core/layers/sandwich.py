"""Sandwich layers (Wang & Manchester 2023, LBDN): from Q = cayley(alpha W / ||W||) = [A | B],
y = sqrt2 A^T Psi relu(sqrt2 Psi^-1 B (s x) + b) is 1-Lipschitz in x (times s) for any W, psi, b.
The convolution applies the same per frequency of a circular convolution (FFT)."""

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

SQRT2 = 2 ** 0.5


class SandwichFc(Cached):
    def __init__(self, fin: int, fout: int, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fout, fin + fout))
        self.bias = nn.Parameter(torch.empty(fout))
        linear_init(self.weight, self.bias)
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())
        self.psi = nn.Parameter(torch.zeros(fout))
        self.scale = scale

    def parameterize(self) -> Tensor:
        return cayley(self.alpha * self.weight / self.weight.norm())

    def forward(self, x: Tensor) -> Tensor:
        q = self.weights()
        fout = q.shape[0]
        h = F.linear(self.scale * x, q[:, fout:]) * (SQRT2 * torch.exp(-self.psi)) + self.bias
        return SQRT2 * F.relu(h) * torch.exp(self.psi) @ q[:, :fout]


class SandwichLin(Cached):
    """The last layer: y = B (s x) + b."""

    def __init__(self, fin: int, fout: int, scale: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fout, fin + fout))
        self.bias = nn.Parameter(torch.empty(fout))
        linear_init(self.weight, self.bias)
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())
        self.scale = scale

    def parameterize(self) -> Tensor:
        return cayley(self.alpha * self.weight / self.weight.norm())

    def forward(self, x: Tensor) -> Tensor:
        q = self.weights()
        return F.linear(self.scale * x, q[:, q.shape[0]:], self.bias)


class SandwichConv(Cached):
    """Per frequency f of the n x n input: Q[f] = cayley(alpha W[f] / ||W||) = [A[f] | B[f]], then
    h = irfft2(sqrt2 Psi^-1 B x^) + b, y = irfft2(sqrt2 A^H Psi rfft2(relu(h))). Stride 2:
    space-to-depth first (4 cin channels at n / 2), with a 1 x 1 kernel as the reference."""

    def __init__(self, cin: int, cout: int, size: int, stride: int = 1, scale: float = 1.0,
                 kernel_size: int = 3) -> None:
        super().__init__()
        self.stride = stride
        if stride == 2:
            cin, size, kernel_size = 4 * cin, size // 2, max(1, kernel_size // 2)
        self.size = size
        self.weight = nn.Parameter(torch.empty(cout, cin + cout, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(cout))
        linear_init(self.weight, self.bias)
        self.alpha = nn.Parameter(kernel_spectrum(self.weight.detach(), size).norm().clone())
        self.psi = nn.Parameter(torch.zeros(cout))
        self.scale = scale

    def parameterize(self) -> Tensor:
        spectrum = kernel_spectrum(self.weight, self.size)
        return cayley(self.alpha * spectrum / spectrum.norm())

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            x = space_to_depth(x)
        q = self.weights()
        cout = q.shape[1]
        psi = self.psi[:, None, None]
        h = apply_spectrum(q[:, :, cout:], self.scale * x) * (SQRT2 * torch.exp(-psi)) + self.bias[:, None, None]
        return SQRT2 * apply_spectrum(q[:, :, :cout].conj().transpose(-2, -1), F.relu(h) * torch.exp(psi))


LAYERS.register("sandwich")(LayerFamily(fc=SandwichFc, lin=SandwichLin, conv=SandwichConv, fc_width=512))
