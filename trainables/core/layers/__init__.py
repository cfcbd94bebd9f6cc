"""Lipschitz-bounded layer families by name (../shared/specs/lipschitz.md). A family module
registers a `LayerFamily`: how to build its hidden fully connected layer (`fc`, activation
included), its last linear layer (`lin`) and its convolution (`conv`, activation included,
stride 1 or 2 by space-to-depth). Every layer is 1-Lipschitz in l2 (times its `scale`), except
the `plain` family, whose bound is measured (`lipschitz_bound`).

Parameterizations (Cayley transforms, rescalings) are recomputed at every training forward and
cached in eval mode until a parameter changes, so evaluating costs about a plain network's time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainables.core.registry import Registry


def cayley(w: Tensor) -> Tensor:
    """The Cayley map of (a batch of) cout x cin matrices, real or complex: Q with orthonormal
    columns (rows when cin > cout). With U = W[:cin], V = W[cin:], A = U - U^H + V^H V:
    Q = [(I + A)^-1 (I - A); -2 V (I + A)^-1]."""
    if w.dim() == 2:
        return cayley(w[None])[0]
    cout, cin = w.shape[-2:]
    if cin > cout:
        return cayley(w.transpose(-2, -1)).transpose(-2, -1)
    u, v = w[:, :cin], w[:, cin:]
    eye = torch.eye(cin, dtype=w.dtype, device=w.device)[None]
    a = u - u.conj().transpose(-2, -1) + v.conj().transpose(-2, -1) @ v
    inverse = torch.linalg.inv(eye + a)
    return torch.cat([inverse @ (eye - a), -2 * v @ inverse], dim=1)


def space_to_depth(x: Tensor) -> Tensor:
    """(B, C, 2H, 2W) -> (B, 4C, H, W): a permutation of the entries, so an isometry; how the
    families take stride 2 without losing their bound."""
    b, c, h, w = x.shape
    return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)


def versions(tensors: Iterable[Tensor]) -> tuple:
    """Identifies the current contents of tensors: in-place changes (an optimizer step,
    load_state_dict) bump a tensor's version counter."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


class Cached(nn.Module):
    """A layer whose weights are a function of its parameters (`parameterize`). Training
    recomputes them every forward; eval mode reuses them until a parameter is changed in place
    (an optimizer step, load_state_dict), which the parameters' version counters reveal."""

    def __init__(self) -> None:
        super().__init__()
        self._cache: tuple[tuple, Any] | None = None

    def parameterize(self) -> Any:
        raise NotImplementedError

    def weights(self) -> Any:
        if self.training:
            self._cache = None
            return self.parameterize()
        key = versions(self.parameters())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, self.parameterize())
        return self._cache[1]


def circular_shift(n: int, kernel_size: int, device: torch.device | None = None) -> Tensor:
    """The phase factors that centre a k x k kernel on an n x n circular grid, on rfft2's
    n x (n // 2 + 1) frequencies."""
    s = (kernel_size - 1) // 2
    k = torch.arange(n, device=device, dtype=torch.float64)
    return torch.exp(2j * torch.pi * s * (k[:, None] + k[None, : n // 2 + 1]) / n)


def kernel_spectrum(kernel: Tensor, n: int) -> Tensor:
    """Per-frequency matrices (n * (n // 2 + 1), cout, cin) of the convolution that conv2d
    computes with circular padding (k - 1) // 2: rfft2(conv(x))[f] = spectrum[f] @ rfft2(x)[f].
    (conv2d correlates, hence the conjugate; the phase centres the kernel.)"""
    cout, cin, k, _ = kernel.shape
    transform = torch.fft.rfft2(kernel, s=(n, n))
    spectrum = (transform * circular_shift(n, k, kernel.device).to(transform.dtype)).conj()
    return spectrum.reshape(cout, cin, -1).permute(2, 0, 1)


def apply_spectrum(matrices: Tensor, x: Tensor) -> Tensor:
    """x (B, cin, n, n) through per-frequency matrices (F, cout, cin): a circular convolution."""
    b, cin, n, _ = x.shape
    spectrum = torch.fft.rfft2(x).reshape(b, cin, -1).permute(2, 1, 0)  # F, cin, B
    out = (matrices @ spectrum).permute(2, 1, 0).reshape(b, -1, n, n // 2 + 1)
    return torch.fft.irfft2(out, s=(n, n))


def linear_init(weight: Tensor, bias: Tensor | None) -> None:
    """nn.Linear's / nn.Conv2d's default initialization, for layers that hold raw parameters."""
    nn.init.kaiming_uniform_(weight, a=5 ** 0.5)
    if bias is not None:
        fan_in = weight[0].numel()
        nn.init.uniform_(bias, -1 / fan_in ** 0.5, 1 / fan_in ** 0.5)


def strided(cin: int, size: int, kernel_size: int, stride: int) -> tuple[int, int, int]:
    """(input channels, spatial size, kernel size) a convolution sees after space-to-depth:
    stride 2 takes 4 cin channels at size / 2 with the kernel halved, as the reference."""
    if stride == 2:
        return 4 * cin, size // 2, max(1, kernel_size // 2)
    return cin, size, kernel_size


class CayleyLinear(Cached):
    """A weight W (rows x cols), a bias, and alpha = ||W|| at initialization; the weights are
    Q = cayley(alpha W / ||W||). Orthogon uses Q, Sandwich (cols = fin + fout) splits it."""

    def __init__(self, rows: int, cols: int, scale: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(rows, cols))
        self.bias = nn.Parameter(torch.empty(rows))
        linear_init(self.weight, self.bias)
        self.alpha = nn.Parameter(self.weight.detach().norm().clone())
        self.scale = scale

    def parameterize(self) -> Tensor:
        return cayley(self.alpha * self.weight / self.weight.norm())


class CayleyConv(Cached):
    """A kernel with `extra_in` more input channels than the (space-to-depth) input, a bias, and
    alpha = the norm of the kernel's spectrum at initialization; the weights are per frequency
    Q[f] = cayley(alpha W[f] / ||W||) of a circular convolution on `size` x `size` inputs."""

    def __init__(self, cin: int, cout: int, size: int, stride: int, scale: float, kernel_size: int,
                 extra_in: int) -> None:
        super().__init__()
        self.stride = stride
        cin, self.size, kernel_size = strided(cin, size, kernel_size, stride)
        self.weight = nn.Parameter(torch.empty(cout, cin + extra_in, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(cout))
        linear_init(self.weight, self.bias)
        self.alpha = nn.Parameter(kernel_spectrum(self.weight.detach(), self.size).norm().clone())
        self.scale = scale

    def parameterize(self) -> Tensor:
        spectrum = kernel_spectrum(self.weight, self.size)
        return cayley(self.alpha * spectrum / spectrum.norm())

    def scaled_input(self, x: Tensor) -> Tensor:
        return self.scale * (space_to_depth(x) if self.stride == 2 else x)


@dataclass(frozen=True)
class LayerFamily:
    """Builders of one family's layers: `fc(fin, fout, scale)` (a hidden layer, activation
    included), `lin(fin, fout, scale)` (the last, linear), `conv(cin, cout, size, stride, scale)`
    (activation included; `size` the input's spatial size n x n; stride 2 by space-to-depth).
    `fc_width`: the hidden width of a KWL model per unit of width, as the reference sizes it;
    `downsample`: how a KWL model halves the image side, by stride-2 convolutions (`stride`) or,
    for a family whose convolutions have stride 1 only, a 4 x 4 sum pooling divided by 4 after
    them (`pool`, 1-Lipschitz: LBDN's AOL network)."""

    fc: Callable[[int, int, float], nn.Module]
    lin: Callable[[int, int, float], nn.Module]
    conv: Callable[[int, int, int, int, float], nn.Module]
    fc_width: int = 640
    downsample: Literal["stride", "pool"] = "stride"
    certified: bool = True  # False: no bound by construction (plain: measured instead)


LAYERS: Registry[LayerFamily] = Registry("layer family")

from trainables.core.layers import aol, orthogon, plain, sandwich  # noqa: E402,F401  (register)
