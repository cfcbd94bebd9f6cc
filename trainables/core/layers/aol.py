"""AOL layers (almost-orthogonal layers, Prach & Lampert 2022): W D with
D = diag(sum_j |W^T W|_ij)^-1/2 has spectral norm <= 1 for any W. The convolution rescales its
output channels by the same bound on the kernel's Gram (conv2d(K, K), zero padding), as the
LBDN reference does; D W is bounded by the same argument applied to W^T. As in the reference,
the convolutions have stride 1 (networks downsample by sum pooling, `downsample="pool"`) and
weights start Xavier-normal (the output does not depend on the weights' scale, but Adam's
relative step does)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.core.layers import LAYERS, Cached, LayerFamily


def xavier_init(weight: Tensor, bias: Tensor) -> None:
    """The reference's initialization: Xavier-normal weights, bias uniform within 1 / sqrt(fan in)."""
    nn.init.xavier_normal_(weight)
    nn.init.uniform_(bias, -weight[0].numel() ** -0.5, weight[0].numel() ** -0.5)


class AolLin(Cached):
    def __init__(self, fin: int, fout: int, scale: float = 1.0, activation: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(fout, fin))
        self.bias = nn.Parameter(torch.empty(fout))
        xavier_init(self.weight, self.bias)
        self.scale = scale
        self.activation = activation

    def parameterize(self) -> Tensor:
        return (self.weight.T @ self.weight).abs().sum(1).rsqrt()

    def forward(self, x: Tensor) -> Tensor:
        y = F.linear(self.scale * self.weights() * x, self.weight, self.bias)
        return F.relu(y) if self.activation else y


def aol_fc(fin: int, fout: int, scale: float = 1.0) -> AolLin:
    return AolLin(fin, fout, scale, activation=True)


class AolConv(Cached):
    def __init__(self, cin: int, cout: int, size: int, stride: int = 1, scale: float = 1.0,
                 kernel_size: int = 3, activation: bool = True) -> None:
        super().__init__()
        if stride != 1:
            raise ValueError("AOL convolutions have stride 1; networks of AOL layers downsample by sum pooling")
        self.weight = nn.Parameter(torch.empty(cout, cin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(cout))
        xavier_init(self.weight, self.bias)
        self.scale = scale
        self.activation = activation

    def parameterize(self) -> Tensor:
        gram = F.conv2d(self.weight, self.weight, padding=self.weight.shape[-1] - 1)
        return gram.abs().sum((1, 2, 3)).rsqrt()

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(self.scale * x, self.weight, padding=self.weight.shape[-1] // 2)
        y = y * self.weights()[:, None, None] + self.bias[:, None, None]
        return F.relu(y) if self.activation else y


LAYERS.register("aol")(LayerFamily(fc=aol_fc, lin=AolLin, conv=AolConv, downsample="pool"))
