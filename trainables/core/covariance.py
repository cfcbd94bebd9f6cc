"""Second moments of input perturbations, in the two representations SGR uses (Roth et al. 2018,
sec. 3.3), and the long-range correlated (LRC) Gaussian noise of the paper's attack.

`FullCovariance` holds the d x d matrix: for low-dimensional inputs. `DisplacementCovariance`
holds, for C x H x W images, a covariance *function* of the rounded pixel distance,
Sigma_ij = c(round(||p_i - p_j||)), one function within a channel and one across channels; its
Sigma g is an FFT convolution with the radial kernel plus channel mixing, never a d x d matrix.

Both keep `stats` (raw second moments in their representation, and the mean perturbation),
which is linear in the perturbations, so the running estimate of Algorithm 1,
S_t = (1 - beta) S_{t-1} + beta * batch estimate, is an average of `stats`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

from trainables.core.registry import ConfigError

FULL_MAX_DIM = 4096  # beyond this a d x d matrix is refused (16M entries)


class Covariance:
    """Raw second moments of perturbations of inputs shaped `shape` (C, H, W)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        self.shape = tuple(shape)
        self.dim = math.prod(shape)
        self.device = torch.device(device)
        self.stats: dict[str, Tensor] | None = None

    def estimate(self, xi: Tensor) -> dict[str, Tensor]:
        """This representation's second moments and the mean of a batch of perturbations."""
        raise NotImplementedError

    def apply(self, g: Tensor) -> Tensor:
        """Sigma g for a batch g shaped (B, *shape); differentiable in g."""
        raise NotImplementedError

    def mean_diagonal(self) -> Tensor:
        """The mean diagonal entry of Sigma (what standardization divides by)."""
        raise NotImplementedError

    def update(self, xi: Tensor, beta: float) -> None:
        """Blend a batch of perturbations into the running estimate (the first batch sets it)."""
        batch = self.estimate(xi.detach())
        if self.stats is None:
            self.stats = batch
        else:
            self.stats = {k: (1 - beta) * self.stats[k] + beta * batch[k] for k in self.stats}

    def centered_estimate(self, batches: Callable[[], Iterable[Tensor]]) -> None:
        """Fix Sigma to the covariance of a data set's inputs (their mean removed); `batches()`
        iterates over the data set (twice: for the mean, then the second moments)."""
        count, total = 0, 0.0
        for batch in batches():
            count, total = count + len(batch), total + batch.double().sum(0)
        mean = (total / count).to(self.device)
        sums: dict[str, Tensor] | None = None
        for batch in batches():
            part = {k: v * len(batch) for k, v in self.estimate(batch.double() - mean).items()}
            sums = part if sums is None else {k: sums[k] + part[k] for k in sums}
        self.stats = {k: (v / count).float() for k, v in sums.items()}
        self.stats["mean"] = torch.zeros_like(self.stats["mean"])

    @property
    def mean(self) -> Tensor:
        return self.stats["mean"].view(self.shape)


class FullCovariance(Covariance):
    """The explicit d x d matrix of raw second moments (low-dimensional inputs)."""

    def __init__(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        super().__init__(shape, device)
        if self.dim > FULL_MAX_DIM:
            raise ConfigError(
                f"sigma_form: full needs a {self.dim} x {self.dim} matrix for inputs {self.shape}; "
                f"allowed up to d = {FULL_MAX_DIM}, use displacement for images"
            )

    def estimate(self, xi: Tensor) -> dict[str, Tensor]:
        flat = xi.flatten(1)
        return {"matrix": flat.T @ flat / len(flat), "mean": flat.mean(0)}

    def apply(self, g: Tensor) -> Tensor:
        return (g.flatten(1) @ self.stats["matrix"].to(g.dtype)).view_as(g)

    def mean_diagonal(self) -> Tensor:
        return self.stats["matrix"].diagonal().mean()

    def set_function(self, intra: Tensor, inter: Tensor) -> None:
        """Sigma from covariance functions of the rounded pixel distance (see DisplacementCovariance)."""
        self.stats = {"matrix": dense_from_functions(self.shape, intra, inter),
                      "mean": torch.zeros(self.dim, dtype=intra.dtype, device=intra.device)}


def num_radii(shape: tuple[int, ...]) -> int:
    """How many rounded pixel distances an H x W image has: 0 .. round(||(H-1, W-1)||)."""
    _, h, w = shape
    return round(math.hypot(h - 1, w - 1)) + 1


def pixel_radii(shape: tuple[int, ...], device: torch.device | None = None) -> Tensor:
    """round(||p_i - p_j||) for every pair of pixel positions of an H x W image, (HW, HW)."""
    _, h, w = shape
    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    points = torch.stack([rows.flatten(), cols.flatten()], 1).double()
    return torch.cdist(points, points).round().long()


def dense_from_functions(shape: tuple[int, ...], intra: Tensor, inter: Tensor) -> Tensor:
    """The explicit d x d matrix of covariance functions (intra-channel, inter-channel) of the
    rounded pixel distance, in the row-major (C, H, W) flattening."""
    channels = shape[0]
    radii = pixel_radii(shape, intra.device)
    same = torch.eye(channels, dtype=torch.bool, device=intra.device)[:, None, :, None]
    blocks = torch.where(same, intra[radii][None, :, None, :], inter[radii][None, :, None, :])
    d = channels * radii.shape[0]
    return blocks.reshape(d, d)


class DisplacementCovariance(Covariance):
    """Sigma_ij = c_same(r) within a channel, c_across(r) across channels, r = round(||p_i - p_j||).

    Displacements (dy, dx) live on a 2H x 2W circular grid, so a zero-padded FFT of that size
    computes both the perturbations' correlations (estimate) and the convolution Sigma g (apply)
    without wrap-around. The functions are the averages, over all pixel pairs at each rounded
    distance, of the products of the perturbations (intra: same channel; inter: different ones).
    """

    def __init__(self, shape: tuple[int, ...], device: torch.device | str = "cpu") -> None:
        super().__init__(shape, device)
        _, h, w = self.shape
        dy = torch.arange(2 * h, device=self.device)
        dy = torch.where(dy < h, dy, dy - 2 * h)
        dx = torch.arange(2 * w, device=self.device)
        dx = torch.where(dx < w, dx, dx - 2 * w)
        pairs = (h - dy.abs()).clamp_min(0)[:, None] * (w - dx.abs()).clamp_min(0)[None, :]
        self.valid = pairs > 0  # the displacement (dy, dx) = (+-H, .) or (., +-W) has no pixel pair
        radius = torch.sqrt((dy[:, None] ** 2 + dx[None, :] ** 2).double()).round().long()
        self.num_radii = num_radii(self.shape)
        self.radius = radius.clamp_max(self.num_radii - 1)  # on the 2H x 2W grid
        self.pairs_per_radius = torch.zeros(self.num_radii, dtype=torch.float64, device=self.device).index_add_(
            0, self.radius[self.valid], pairs[self.valid].double())
        self._kernel_fft: tuple[dict[str, Tensor], Tensor] | None = None  # (for which stats, kernels)

    @property
    def fft_size(self) -> tuple[int, int]:
        return 2 * self.shape[1], 2 * self.shape[2]

    def estimate(self, xi: Tensor) -> dict[str, Tensor]:
        channels = self.shape[0]
        spectrum = torch.fft.rfft2(xi, s=self.fft_size)
        # correlations summed over pixel pairs at each displacement: within channels from the
        # channels' power spectra, within plus across from the power spectrum of their sum
        same = torch.fft.irfft2(torch.view_as_real(spectrum).square().sum((1, -1)).mean(0), s=self.fft_size)
        both = torch.fft.irfft2(torch.view_as_real(spectrum.sum(1)).square().sum(-1).mean(0), s=self.fft_size)

        def by_radius(total: Tensor, channel_pairs: int) -> Tensor:
            summed = torch.zeros(self.num_radii, dtype=torch.float64, device=total.device)
            summed.index_add_(0, self.radius[self.valid], total[self.valid].double())
            return (summed / (self.pairs_per_radius * max(channel_pairs, 1))).to(xi.dtype)

        return {"intra": by_radius(same, channels),
                "inter": by_radius(both - same, channels * (channels - 1)),
                "mean": xi.flatten(1).mean(0)}

    def set_function(self, intra: Tensor, inter: Tensor) -> None:
        """Fix Sigma to given functions of the rounded distance 0 .. num_radii - 1."""
        if len(intra) != self.num_radii or len(inter) != self.num_radii:
            raise ValueError(f"covariance functions need {self.num_radii} values, got {len(intra)}, {len(inter)}")
        self.stats = {"intra": intra, "inter": inter,
                      "mean": torch.zeros(self.dim, dtype=intra.dtype, device=intra.device)}

    def kernel_fft(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """The within-minus-across and the across kernels on the circular displacement grid,
        Fourier transformed (real: the kernels are symmetric); recomputed when the estimate changes."""
        if self._kernel_fft is None or self._kernel_fft[0] is not self.stats:
            intra = torch.where(self.valid, self.stats["intra"][self.radius], 0.0)
            inter = torch.where(self.valid, self.stats["inter"][self.radius], 0.0)
            kernels = torch.stack([intra - inter, inter]).to(dtype)
            self._kernel_fft = (self.stats, torch.fft.rfft2(kernels, s=self.fft_size).real)
        return self._kernel_fft[1][0], self._kernel_fft[1][1]

    def apply(self, g: Tensor) -> Tensor:
        """(Sigma g)_c = K_same * g_c + K_across * sum_{c' != c} g_c'
        = (K_same - K_across) * g_c + K_across * sum_c' g_c', two convolutions by FFT."""
        _, h, w = self.shape
        difference, across = self.kernel_fft(g.dtype)
        spectrum = torch.fft.rfft2(g, s=self.fft_size)
        mixed = spectrum * difference + spectrum.sum(1, keepdim=True) * across
        return torch.fft.irfft2(mixed, s=self.fft_size)[..., :h, :w]

    def mean_diagonal(self) -> Tensor:
        return self.stats["intra"][0]


def exponential_functions(num_radii: int, zeta: float, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """The paper's LRC covariance functions at integer distances: exp(-r / zeta) within a
    channel and 0.5 * exp(-r / zeta) across channels."""
    decay = torch.exp(-torch.arange(num_radii, dtype=torch.float64, device=device) / zeta)
    return decay, 0.5 * decay


class LrcNoise:
    """Gaussian noise with covariance exp(-r / zeta) within a channel and 0.5 exp(-r / zeta) across
    channels (r the exact pixel distance): Sigma = B (x) K, B = 0.5 (I + 1 1^T), K_pq = exp(-r_pq / zeta).
    Sampled through the Cholesky factors of the C x C and HW x HW factors, shared by all samples."""

    def __init__(self, shape: tuple[int, ...], zeta: float, device: torch.device | str = "cpu") -> None:
        if zeta <= 0:
            raise ConfigError(f"zeta: the decay length must be > 0, got {zeta}")
        channels, h, w = shape
        self.shape = tuple(shape)
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        points = torch.stack([rows.flatten(), cols.flatten()], 1).double()
        spatial = torch.exp(-torch.cdist(points, points) / zeta)
        channel = 0.5 * (torch.eye(channels, dtype=torch.float64) + 1.0)
        jitter = 1e-10 * torch.eye(h * w, dtype=torch.float64)
        self.spatial_factor = torch.linalg.cholesky(spatial + jitter).float().to(device)
        self.channel_factor = torch.linalg.cholesky(channel).float().to(device)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        channels, h, w = self.shape
        device = self.spatial_factor.device
        z = torch.randn(n, channels, h * w, generator=generator, device=device)
        return (self.channel_factor @ z @ self.spatial_factor.T).view(n, channels, h, w)

    def sample_scaled(self, n: int, eps: float, generator: torch.Generator) -> Tensor:
        """Samples each scaled to l2 norm eps (the attack's perturbations)."""
        noise = self.sample(n, generator)
        return noise * (eps / noise.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, 1, 1, 1)
