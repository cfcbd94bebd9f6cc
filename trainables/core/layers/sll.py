"""SLL residual layers (SDP-based Lipschitz layers, Araujo et al. 2023), in the corrected form:
out = x - W^T (T * relu(W x + b)), T_i = 2 |q_i| / sum_j |(W W^T)_ij| |q_j|, which is 1-Lipschitz
for any W, q, b. Written without 1/q (so no epsilon is needed: the older public version put
one inside the rescaling and lost the guarantee). The convolution uses the kernel's Gram
conv2d(K, K) and a transposed convolution. Residual: input and output widths are equal."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.core.layers import Cached, linear_init


class SllFc(Cached):
    def __init__(self, features: int, inner: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(inner, features))
        self.bias = nn.Parameter(torch.empty(inner))
        linear_init(self.weight, self.bias)
        self.q = nn.Parameter(torch.rand(inner))

    def parameterize(self) -> Tensor:
        q = self.q.abs()
        return 2 * q / ((self.weight @ self.weight.T).abs() @ q)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(F.linear(x, self.weight, self.bias)) * self.weights()
        return x - h @ self.weight


class SllConv(Cached):
    def __init__(self, channels: int, inner: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(inner, channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(inner))
        linear_init(self.weight, self.bias)
        self.q = nn.Parameter(torch.rand(inner))

    def parameterize(self) -> Tensor:
        q = self.q.abs()
        gram = F.conv2d(self.weight, self.weight, padding=self.weight.shape[-1] - 1).abs().sum((2, 3))
        return 2 * q / (gram @ q)

    def forward(self, x: Tensor) -> Tensor:
        padding = self.weight.shape[-1] // 2
        h = F.relu(F.conv2d(x, self.weight, self.bias, padding=padding)) * self.weights()[:, None, None]
        return x - F.conv_transpose2d(h, self.weight, padding=padding)
