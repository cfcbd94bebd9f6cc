"""Skew orthogonal convolutions (Singla & Feizi 2021, 2022) and the activations and channel
pooling of their LipConvNets.

SOC: L = (W - W^T) / 2 with W^T the adjoint convolution (kernel transposed and flipped), so L
is skew-symmetric and exp(L) orthogonal. L is rescaled to spectral norm about `multiplier`
by a persistent power iteration, and exp(L) x is the series sum_{i<K} L^i x / i! with K
`train_terms` in training and `eval_terms` in evaluation. The truncated series is not exactly
orthogonal: with sigma >= ||L|| (here exact, from the SVDs of the kernel's spectrum), its
singular values lie within [1 - t, 1 + t], t = sigma^K / K! * 1 / (1 - sigma / (K + 1)) (the
remainder of the exponential series, for sigma < K + 1), and `norm_bound()` = 1 + t is what
certification multiplies, never an assumed 1.

`fast`: the series by Horner's rule in a custom autograd function whose backward computes the
input gradient with the same series in -L (exact: (L^i)^T = (-L)^i) and the kernel gradient from
the outermost application of L only (an approximation, good to first order in sigma).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trainables.core.layers import kernel_spectrum, space_to_depth


def adjoint_kernel(kernel: Tensor) -> Tensor:
    """The kernel of the adjoint of a same-padded convolution: channels swapped, taps flipped."""
    return kernel.transpose(0, 1).flip(2, 3)


def exp_series(x: Tensor, kernel: Tensor, terms: int) -> Tensor:
    """sum_{i < terms} L^i x / i! by Horner's rule: z <- x + L z / i for i = terms - 1 .. 1."""
    pad = kernel.shape[-1] // 2
    z = x
    for i in range(terms - 1, 0, -1):
        z = x + F.conv2d(z, kernel, padding=pad) / i
    return z


class FastExpSeries(torch.autograd.Function):
    """exp_series with the SOC fast-training backward."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor, kernel: Tensor, terms: int) -> Tensor:
        pad = kernel.shape[-1] // 2
        inner = x  # the Horner state before its last step, which the kernel gradient reads
        for i in range(terms - 1, 1, -1):
            inner = x + F.conv2d(inner, kernel, padding=pad) / i
        ctx.save_for_backward(inner, kernel)
        ctx.terms = terms
        return x + F.conv2d(inner, kernel, padding=pad)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple[Tensor, Tensor, None]:
        inner, kernel = ctx.saved_tensors
        pad = kernel.shape[-1] // 2
        grad = grad_out
        for i in range(ctx.terms - 1, 1, -1):
            grad = grad_out + F.conv2d(grad, -kernel, padding=pad) / i
        grad_kernel = torch.nn.grad.conv2d_weight(inner, kernel.shape, grad, padding=pad)
        return grad_out + F.conv2d(grad, -kernel, padding=pad), grad_kernel, None


def series_remainder(sigma: float, terms: int) -> float:
    """An upper bound on ||exp(L) - sum_{i<terms} L^i / i!|| for ||L|| <= sigma < terms + 1."""
    if sigma >= terms + 1:
        return math.inf
    return sigma ** terms / math.factorial(terms) / (1 - sigma / (terms + 1))


class SocConv(nn.Module):
    """A SOC convolution from `cin` to `cout` channels on `size` x `size` inputs; stride 2 by
    space-to-depth. Channels are zero-padded up to (or cut down to) the output's."""

    def __init__(self, cin: int, cout: int, size: int, stride: int = 1, kernel_size: int = 3,
                 train_terms: int = 6, eval_terms: int = 15, multiplier: float = 1.0, fast: bool = False,
                 bias: bool = True, init_iterations: int = 50) -> None:
        super().__init__()
        self.stride, self.cout = stride, cout
        self.cin = cin * stride * stride
        self.size = size // stride
        self.channels = max(self.cin, cout)
        self.train_terms, self.eval_terms, self.fast = train_terms, eval_terms, fast
        self.multiplier = 1.0 if kernel_size == 1 else multiplier
        self.weight = nn.Parameter(torch.randn(self.channels, self.channels, kernel_size, kernel_size)
                                   / self.channels ** 0.5)
        self.bias = nn.Parameter(torch.empty(cout).uniform_(-1, 1) / self.channels ** 0.5) if bias else None
        self.register_buffer("power_vector", torch.randn(1, self.channels, self.size, self.size))
        if not self.weight.is_meta:  # a spec check builds models on the meta device: nothing to estimate
            self.power_iteration(init_iterations)

    def skew(self) -> Tensor:
        return 0.5 * (self.weight - adjoint_kernel(self.weight))

    @torch.no_grad()
    def power_iteration(self, iterations: int) -> None:
        """Advance the persistent estimate of ||L|| (L^T L v = -L L v)."""
        skew, pad = self.skew(), self.weight.shape[-1] // 2
        v = self.power_vector
        for _ in range(iterations):
            v = -F.conv2d(F.conv2d(v, skew, padding=pad), skew, padding=pad)
            v = v / v.norm().clamp_min(1e-12)
        self.power_vector.copy_(v)

    def kernel(self) -> Tensor:
        """L rescaled to spectral norm about `multiplier` (by the power-iteration estimate)."""
        skew = self.skew()
        sigma = F.conv2d(self.power_vector, skew, padding=self.weight.shape[-1] // 2).norm()
        return self.multiplier * skew / sigma.detach().clamp_min(1e-12)

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            self.power_iteration(1)
        if self.stride == 2:
            x = space_to_depth(x)
        if self.cout > self.cin:
            x = F.pad(x, (0, 0, 0, 0, 0, self.cout - self.cin))
        kernel = self.kernel()
        terms = self.train_terms if self.training else self.eval_terms
        z = FastExpSeries.apply(x, kernel, terms) if self.fast else exp_series(x, kernel, terms)
        z = z[:, : self.cout]
        return z if self.bias is None else z + self.bias[:, None, None]

    @torch.no_grad()
    def skew_norm(self) -> float:
        """||L|| exactly enough to be an upper bound: the zero-padded convolution is a compression
        of the circular one on a grid large enough to hold it, whose norm is the largest
        singular value over the frequencies."""
        kernel = self.kernel().double()
        spectrum = kernel_spectrum(kernel, self.size + kernel.shape[-1] - 1)
        return float(torch.linalg.matrix_norm(spectrum, ord=2).max())

    def norm_bound(self) -> float:
        """An upper bound on this layer's l2 operator norm as evaluated (eval_terms terms)."""
        return 1 + series_remainder(self.skew_norm(), self.eval_terms)


class MaxMin(nn.Module):
    """GroupSort of pairs: the channel halves (a, b) -> (max(a, b), min(a, b)); a permutation at
    every input, so norm-preserving and 1-Lipschitz."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)


class HouseholderActivation(nn.Module):
    """HH1: each channel pair z = (a, b) is reflected across the line at angle theta / 2 when
    v^T z > 0, v = (sin theta/2, -cos theta/2), and kept otherwise; continuous (the reflection
    fixes the line v^T z = 0) and orthogonal on each side, so 1-Lipschitz. theta starts at pi/2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.full((1, channels // 2, 1, 1), math.pi / 2))

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        theta = self.theta.view(1, -1, *([1] * (x.dim() - 2)))
        side = a * torch.sin(theta / 2) - b * torch.cos(theta / 2)
        reflected_a = a * torch.cos(theta) + b * torch.sin(theta)
        reflected_b = a * torch.sin(theta) - b * torch.cos(theta)
        flip = side > 0
        return torch.cat([torch.where(flip, reflected_a, a), torch.where(flip, reflected_b, b)], dim=1)


class SecondOrderHouseholder(nn.Module):
    """HH2 (Singla & Feizi 2022): each channel pair z = (a, b) is split by its angle
    phi = (atan2(b, a) - theta0 / 2) mod 2 pi into four sectors at theta1 / 2, (theta1 + theta2) / 2
    and pi + theta2 / 2, which it keeps, reflects (across the line at angle (theta0 + theta1) / 2),
    rotates (by -theta2) or reflects (across the line at theta0 / 2). Every piece is orthogonal
    and the pieces meet on the sector boundaries, so the map is 1-Lipschitz and keeps the norm.
    The thetas start uniform in [0, pi) and are used clamped to [0, 2 pi]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.thetas = nn.Parameter(math.pi * torch.rand(3, channels // 2))

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        shape = (1, -1, *([1] * (x.dim() - 2)))
        theta0, theta1, theta2 = (t.clamp(0.0, 2 * math.pi).view(shape) for t in self.thetas)
        phi = torch.remainder(torch.atan2(b, a) - theta0 / 2, 2 * math.pi)

        def reflect(angle: Tensor) -> tuple[Tensor, Tensor]:
            return a * torch.cos(angle) + b * torch.sin(angle), a * torch.sin(angle) - b * torch.cos(angle)

        rotated = (a * torch.cos(theta2) + b * torch.sin(theta2), -a * torch.sin(theta2) + b * torch.cos(theta2))
        pieces = [(a, b), reflect(theta0 + theta1), rotated, reflect(theta0)]
        sector = ((phi >= theta1 / 2).long() + (phi >= (theta1 + theta2) / 2).long()
                  + (phi >= math.pi + theta2 / 2).long())
        out_a = sum(torch.where(sector == k, piece[0], 0.0) for k, piece in enumerate(pieces))
        out_b = sum(torch.where(sector == k, piece[1], 0.0) for k, piece in enumerate(pieces))
        return torch.cat([out_a, out_b], dim=1)


class MaxPool(nn.Module):
    """Channel pooling of pairs: max(a, b), 1-Lipschitz."""

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        return torch.maximum(a, b)


class LipPool(nn.Module):
    """The l2-distance-to-manifold pooling (Singla & Feizi 2022): each channel pair z = (a, b)
    maps to its signed distance to the two rays at angles (pi +- theta) / 2, i.e. a projection on
    the normal of the nearer ray or ||z|| in the wedge between them; a distance to a set is
    1-Lipschitz. theta (learnable, clamped to [0, pi]) starts uniform in [0, pi]."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(math.pi * torch.rand(channels // 2))

    def forward(self, x: Tensor) -> Tensor:
        a, b = x.chunk(2, dim=1)
        theta = self.theta.clamp(0, math.pi).view(1, -1, *([1] * (x.dim() - 2)))
        angle = torch.atan2(b, a) % (2 * math.pi)
        first = -a * torch.sin(theta / 2) + b * torch.cos(theta / 2)
        last = -a * torch.sin(theta / 2) - b * torch.cos(theta / 2)
        radius = torch.sqrt(a * a + b * b + 1e-12)  # smooth at 0; still 1-Lipschitz
        lower, upper = (theta + math.pi) / 2, (3 * math.pi - theta) / 2
        return torch.where(angle < lower, first, torch.where(angle < upper, radius, last))
