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

from trainables.core.data import DatasetInfo
from trainables.core.layers import kernel_spectrum, versions
from trainables.core.models import Normalize
from trainables.core.models.references import LBDN, reference_stats
from trainables.core.registry import ConfigError
from trainables.core.spectral import record_input_shapes

LIPSCHITZ_MODELS: set[str] = set()  # registered models that certification can read


def check_options(model: str, info_shape: tuple[int, ...], side_multiple: int,
                  choices: dict[str, tuple[object, tuple]], gamma: float | None = None) -> None:
    """Refuse what a Lipschitz model cannot be built with, naming the option: each chosen value
    (`choices`: option -> (value, allowed)), a non-positive gamma, an image side it cannot halve."""
    for option, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"model.{option}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
    if gamma is not None and not gamma > 0:
        raise ConfigError(f"model.gamma: must be > 0, got {gamma}")
    if info_shape[1] % side_multiple:
        raise ConfigError(f"model: {model} needs an image side divisible by {side_multiple}, got {info_shape}")


class Center(Normalize):
    """(x - mean) / std per channel: `std` one number (default 1: a shift only), or one per
    channel (LBDN's `normalized`). The layer's Lipschitz constant, 1 / min(std), enters the bound
    (`norm_bound`), so certificates stay in pixel units."""

    def __init__(self, mean: tuple[float, ...], std: float | tuple[float, ...] = 1.0) -> None:
        stds = (float(std),) if isinstance(std, int | float) else tuple(std)
        super().__init__(mean, stds, persistent_std=False)
        self.bound = 1.0 / min(stds)  # a Python number: reading it never waits for a GPU

    def norm_bound(self) -> float:
        return self.bound


def lbdn_center(info: DatasetInfo, normalized: bool) -> Center:
    """LBDN's input step: centred by its mean, and under `normalized` divided by its per-channel std."""
    mean, std = reference_stats(info, LBDN)
    return Center(mean, std if normalized else 1.0)


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


class CurvatureHead(nn.Module):
    """The 1-hidden-layer MLP head of Singla & Feizi 2022: Linear -> Softplus -> Linear,
    unconstrained, certified through a curvature bound. For the predicted class y and another j,
    the margin g(z) = z_y - z_j has Hessian W1^T diag(d * softplus'') W1 (d = w2_y - w2_j,
    0 < softplus'' <= beta / 4), so g(z + delta) >= g(z) - G ||delta|| - M ||delta||^2 / 2 with
    G = ||grad g(z)|| and M = beta / 4 * max_k max(-d_k, 0) * ||W1||^2: g stays positive within
    (sqrt(G^2 + 2 M g) - G) / M = 2 g / (G + sqrt(G^2 + 2 M g)). ||W1|| comes from a persistent
    power iteration in training (the training-time bound, cheap and differentiable) and from an
    SVD in evaluation (an upper bound, so the certificate is sound). `precise_radius` is the
    reference's tighter evaluation-time certificate."""

    def __init__(self, features: int, hidden: int, classes: int, beta: float = 1.0) -> None:
        super().__init__()
        self.linear1 = nn.Linear(features, hidden)
        self.linear2 = nn.Linear(hidden, classes)
        self.beta = beta
        self.register_buffer("power_vector", F.normalize(torch.randn(features), dim=0))
        self._curvatures: tuple[tuple, Tensor] | None = None

    def forward(self, z: Tensor) -> Tensor:
        return self.linear2(F.softplus(self.linear1(z), beta=self.beta))

    def weight_norm(self) -> Tensor:
        w = self.linear1.weight
        if not self.training:
            return torch.linalg.matrix_norm(w.double(), ord=2).to(w.dtype)
        with torch.no_grad():
            v = F.normalize(w.T @ (w @ self.power_vector), dim=0)
            self.power_vector.copy_(v)
        return (w @ v).norm()

    def radius(self, z: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(logits, the l2 radius around the features z within which class `labels` (default:
        the predicted one) keeps the top logit; 0 where another class already beats it)."""
        pre = self.linear1(z)
        logits = self.linear2(F.softplus(pre, beta=self.beta))
        top = logits.argmax(1) if labels is None else labels
        w2 = self.linear2.weight
        d = w2[top][:, None, :] - w2[None, :, :]  # B x K x hidden
        margin = logits.gather(1, top[:, None]) - logits  # B x K
        slope = torch.sigmoid(self.beta * pre)[:, None, :]  # softplus'
        gradient = ((d * slope) @ self.linear1.weight).norm(dim=2)  # B x K
        curvature = self.beta / 4 * (-d).clamp_min(0).amax(2) * self.weight_norm() ** 2
        positive = margin.clamp_min(0)
        # (sqrt(G^2 + 2 M g) - G) / M, written without the cancellation (and finite at M = 0)
        root = torch.sqrt(gradient ** 2 + 2 * curvature * positive + 1e-24)
        radius = 2 * positive / (gradient + root).clamp_min(1e-12)
        own_class = torch.arange(margin.shape[1], device=z.device) == top[:, None]
        return logits, torch.where(own_class, torch.inf, radius).min(1).values


    def pair_curvatures(self) -> Tensor:
        """K x K, float64: entry (a, b) = beta / 4 * lambda_max(W1^T diag(relu(w2_a - w2_b)) W1),
        an upper bound on the largest Hessian eigenvalue of z_a - z_b (and, read as (b, a), on
        minus its smallest). Exact eigenvalues per class pair (the reference's power iteration
        can only underestimate them), on the smaller of W1 W1^T and W1^T W1; cached until the
        weights change."""
        key = versions([self.linear1.weight, self.linear2.weight])
        if self._curvatures is not None and self._curvatures[0] == key:
            return self._curvatures[1]
        w1, w2 = self.linear1.weight.detach().double(), self.linear2.weight.detach().double()
        gram = w1 @ w1.T if w1.shape[0] <= w1.shape[1] else None
        positive = (w2[:, None, :] - w2[None, :, :]).clamp_min(0).flatten(0, 1)  # K^2 x hidden
        side = min(w1.shape)
        largest = []
        for part in positive.split(max(1, 2 ** 24 // side ** 2)):
            if gram is not None:
                root = part.sqrt()
                matrices = root[:, :, None] * gram * root[:, None, :]
            else:
                matrices = (w1.T * part[:, None, :]) @ w1
            largest.append(torch.linalg.eigvalsh(matrices)[:, -1].clamp_min(0))
        curvatures = self.beta / 4 * torch.cat(largest).view(w2.shape[0], w2.shape[0])
        self._curvatures = (key, curvatures)
        return curvatures

    @torch.no_grad()
    def precise_radius(self, z: Tensor, labels: Tensor | None = None, outer: int = 5, inner: int = 5,
                       taylor: int = 10, min_curvature: float = 1e-4) -> tuple[Tensor, Tensor]:
        """(logits, l2 radius around the features z) by Singla & Feizi's curvature-based
        certificate (improved_l2_robustness `_tight_certificates`): per other class j, the
        margin g = z_y - z_j has Hessian eigenvalues within [-m, M] (`pair_curvatures`); for a
        dual variable eta in [0, 1 / max(m, M)] the minimum of ||delta||^2 / 2 + eta g(z + delta),
        found by Newton steps (the inverse Hessian by a `taylor`-term Neumann series), is a lower
        bound on half the squared distance to the class boundary (weak duality), and bisection
        on eta (`outer` steps) moves it towards the distance itself. Unlike the reference, which
        trusts a Newton solve whose gradient is below 1e-6, the bound is the minimum's value less
        ||gradient||^2 / (2 (1 - eta m)) (strong convexity), sound at any accuracy of the solve,
        and the best over the eta tried is kept. Float64; every other class is certified against
        (the reference: the 9 of highest logit)."""
        w1, b1 = self.linear1.weight.double(), self.linear1.bias.double()
        w2, b2 = self.linear2.weight.double(), self.linear2.bias.double()
        dtype, z = z.dtype, z.double()

        def margins(points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            """g, its gradient and softplus'' / beta at the points, per (example, class) pair."""
            pre = points @ w1.T + b1
            slope = torch.sigmoid(self.beta * pre)
            value = (F.softplus(pre, beta=self.beta) * d).sum(1) + c
            return value, (d * slope) @ w1, slope * (1 - slope)

        logits = F.softplus(z @ w1.T + b1, beta=self.beta) @ w2.T + b2
        top = logits.argmax(1) if labels is None else labels
        batch, classes = logits.shape
        others = torch.arange(classes, device=z.device).expand(batch, classes)
        others = others[others != top[:, None]].view(batch, classes - 1)
        pairs = top[:, None].expand_as(others)
        d = (w2[pairs] - w2[others]).flatten(0, 1)
        c = (b2[pairs] - b2[others]).flatten()
        curvatures = self.pair_curvatures().to(z.device)
        lower = curvatures[others, pairs].flatten()
        bound = torch.maximum(curvatures[pairs, others].flatten(), lower).clamp_min(min_curvature)
        x = z[:, None, :].expand(batch, classes - 1, z.shape[1]).flatten(0, 1)
        delta = torch.zeros_like(x)
        low, high = torch.zeros_like(bound), 1 / bound
        best = torch.zeros_like(bound)
        for _ in range(outer):
            eta = (low + high) / 2
            for _ in range(inner):
                _, gradient, curvature = margins(x + delta)
                step = delta + eta[:, None] * gradient
                weights = eta[:, None] * d * self.beta * curvature
                solve = step
                for _ in range(taylor):
                    solve = step - ((solve @ w1.T) * weights) @ w1
                delta = delta - solve
            value, gradient, _ = margins(x + delta)
            residual = delta + eta[:, None] * gradient
            dual = (delta ** 2).sum(1) + 2 * eta * value - (residual ** 2).sum(1) / (1 - eta * lower)
            best = torch.maximum(best, dual)
            low, high = torch.where(value > 0, eta, low), torch.where(value > 0, high, eta)
        margin = (logits.gather(1, top[:, None]) - logits.gather(1, others)).flatten()
        radius = torch.where(margin > 0, best.clamp_min(0).sqrt(), 0.0).view(batch, classes - 1)
        return logits.to(dtype), radius.min(1).values.to(dtype)


class LipschitzNet(nn.Module):
    """A classifier with a known l2 Lipschitz bound and a certificate (`certify`) that depends on
    its `head`: `plain` (the margin over sqrt2 times the bound), `lln` (per class pair, with the
    normalized last rows) or `mlp` (a CurvatureHead on the features)."""

    def __init__(self, body: nn.Sequential, head: str, gamma: float | None, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.body = body
        self.head = head
        self.gamma = gamma
        self.input_shape = input_shape
        self._bound: tuple[tuple, float] | None = None

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def lipschitz_bound(self, fresh: bool = True) -> float:
        """`measured_bound()`, cached until a parameter or buffer changes in place; with `fresh`
        false, the last one measured (a training regularizer's cheap, slightly stale view)."""
        if self.gamma is not None:  # by construction, after the inputs' scaling
            return self.gamma * math.prod(m.norm_bound() for m in self.body.modules() if isinstance(m, Center))
        key = versions([*self.parameters(), *self.buffers()])
        if self._bound is None or (fresh and self._bound[0] != key):
            self._bound = (key, self.measured_bound())
        return self._bound[1]

    def measured_bound(self) -> float:
        """Of the whole network (plain head) or of its features (lln, mlp): the product of its
        layers' bounds, `norm_bound()` where a layer has one (SOC), measured operator norms for
        plain convolutions and linear layers."""
        probe = torch.zeros(1, *self.input_shape, device=next(self.parameters()).device)
        was_training = self.training
        self.eval()  # a training forward would advance the layers' power iterations
        shapes = record_input_shapes(self.body, probe)
        self.train(was_training)
        layers = dict(self.body.named_modules())
        heads = {n for n, m in layers.items() if isinstance(m, NormalizedLinear | CurvatureHead)}
        heads |= {n for n in layers for h in heads if n.startswith(f"{h}.")}
        bound = math.prod(m.norm_bound() for n, m in layers.items() if hasattr(m, "norm_bound") and n not in heads)
        return bound * math.prod(operator_norm(layers[n], shape) for n, shape in shapes.items() if n not in heads)

    def certify(self, x: Tensor, fresh: bool = True, labels: Tensor | None = None,
                precise: bool = False) -> tuple[Tensor, Tensor]:
        """(logits, per example the l2 radius within which class `labels` (default: the
        predicted one) keeps the top logit, negative (0 for the MLP head) where another class
        already beats it); differentiable, for certificate regularization, which certifies the
        true labels as Singla & Feizi's `ortho_certificates` / `lln_certificates` do (`fresh`:
        see lipschitz_bound). `precise`: the MLP head's iterative certificate (evaluation only,
        not differentiable); the other heads' certificates are already exact for their bound."""
        bound = self.lipschitz_bound(fresh)
        if self.head == "mlp":
            head = self.body[-1]
            logits, radius = (head.precise_radius if precise else head.radius)(self.body[:-1](x), labels)
            return logits, radius / bound
        logits = self.body(x)
        if logits.shape[1] == 1:  # a regression has no class to change to: its target decides
            return logits, torch.full_like(logits[:, 0], torch.inf)
        target = logits.argmax(1) if labels is None else labels
        gaps = logits.gather(1, target[:, None]) - logits  # B x K
        if self.head == "lln":
            weight = F.normalize(self.body[-1].weight, dim=1)
            distances = (weight[target][:, None, :] - weight[None, :, :]).norm(dim=2)  # B x K
            ratios = torch.where(distances > 0, gaps / distances.clamp_min(1e-12), torch.inf)
            return logits, ratios.min(1).values / bound
        own_class = F.one_hot(target, logits.shape[1]).bool()
        return logits, gaps.masked_fill(own_class, torch.inf).min(1).values / (2 ** 0.5 * bound)
