"""Square Attack (Andriushchenko, Croce, Flammarion, Hein 2020): AutoAttack's black-box member.

Random search on the margin loss with square-shaped updates, linf (Algorithm 1: vertical-stripe
start, windows set to +-eps per channel) and l2 (Algorithm 2: a start of tiled pseudo-Gaussian
bumps, mass moved between two windows, the perturbation kept on the eps-sphere). The window's
share of the image follows the paper's schedule of p (halved at 10, 50, 200, 500, 1k, 2k, 4k,
6k and 8k of 10k queries, rescaled to the budget). Written here because the kept library
candidate (ART 1.20's SquareAttack) scales the l2 window by `/= a * b` where the paper has
`/ a * b`; adv-lib has no Square. Only queries the model's logits: no gradients.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The share of the image a window covers at this iteration (the paper's schedule)."""
    step = int(iteration / queries * 10000)
    return p_init / 2 ** sum(step > h for h in HALVINGS)


def margin(logits: Tensor, y: Tensor) -> Tensor:
    """z_y - max_{j != y} z_j: positive while the example is classified correctly."""
    return logits.gather(1, y[:, None])[:, 0] - logits.scatter(1, y[:, None], -torch.inf).amax(1)


def pseudo_gaussian(height: int, width: int) -> Tensor:
    """Concentric rectangles weighted 1 / (k + 1)^2 from the centre, l2-normalized."""
    bump = torch.zeros(height, width, dtype=torch.float64)
    centre_h, centre_w = height // 2, width // 2
    for k in range(max(centre_h, centre_w) + 1):
        bump[max(centre_h - k, 0):min(centre_h + k + 1, height), max(centre_w - k, 0):min(centre_w + k + 1, width)] \
            += 1.0 / (k + 1) ** 2
    return bump / bump.norm()


def window_pattern(size: int, generator: torch.Generator) -> Tensor:
    """Two opposite pseudo-Gaussian halves, randomly transposed: the l2 update's shape."""
    top = pseudo_gaussian(size // 2, size)
    pattern = torch.cat([top, -pseudo_gaussian(size - size // 2, size)])
    pattern = pattern / pattern.norm()
    if torch.rand((), generator=generator) > 0.5:
        pattern = pattern.T
    return pattern


def random_signs(shape: tuple[int, ...], generator: torch.Generator, like: Tensor) -> Tensor:
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(like)


def initial_perturbation(x: Tensor, eps: float, norm: str, generator: torch.Generator) -> Tensor:
    n, channels, height, width = x.shape
    if norm == "linf":
        return eps * random_signs((n, channels, 1, width), generator, x).expand_as(x)
    tile = height // 5
    delta = torch.zeros_like(x)
    offset = (height - tile * 5) // 2
    for row in range(offset, offset + 5 * tile, tile):
        for col in range(offset, min(offset + 5 * tile, width - tile + 1), tile):
            bump = window_pattern(tile, generator).to(x)
            delta[:, :, row:row + tile, col:col + tile] += bump * random_signs((n, channels, 1, 1), generator, x)
    return eps * delta / delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


def propose(x: Tensor, delta: Tensor, eps: float, norm: str, fraction: float, generator: torch.Generator) -> Tensor:
    """A candidate perturbation for every example: one (linf) or two (l2) random windows changed."""
    n, channels, height, width = x.shape
    if norm == "linf":
        size = min(max(round(math.sqrt(fraction * height * width)), 1), height - 1)
        top, left = (int(torch.randint(0, dim - size, (), generator=generator)) for dim in (height, width))
        candidate = delta.clone()
        candidate[:, :, top:top + size, left:left + size] = eps * random_signs((n, channels, 1, 1), generator, x)
        return candidate
    size = max(round(math.sqrt(fraction * height * width)), 3)
    size = min(size + (size % 2 == 0), height - 1)
    top, left, top2, left2 = (int(torch.randint(0, dim - size, (), generator=generator))
                              for dim in (height, width, height, width))
    window = (slice(None), slice(None), slice(top, top + size), slice(left, left + size))
    window2 = (slice(None), slice(None), slice(top2, top2 + size), slice(left2, left2 + size))
    both = torch.zeros_like(x[:1])
    both[window] = 1.0
    both[window2] = 1.0
    image_norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    window_norm = delta[window].square().sum((2, 3), keepdim=True).sqrt()
    windows_norm = (delta * both).square().sum((2, 3), keepdim=True).sqrt()
    update = window_pattern(size, generator).to(x) * random_signs((n, channels, 1, 1), generator, x)
    update = update + delta[window] / (window_norm + 1e-10)
    budget = ((eps ** 2 - image_norm ** 2).clamp_min(0) / channels + windows_norm ** 2).sqrt()
    update = update / update.square().sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * budget
    candidate = delta.clone()
    candidate[window2] = 0.0
    candidate[window] = update
    return eps * candidate / candidate.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


@torch.no_grad()
def square(model: nn.Module, inputs: Tensor, labels: Tensor, eps: float, norm: str = "linf",
           n_queries: int = 5000, p_init: float | None = None, seed: int = 0) -> Tensor:
    """Untargeted Square Attack on images in [0, 1] (B x C x H x W), in adv-lib's form
    `attack(model, inputs, labels, **kw) -> adversarial inputs`; at most `n_queries` model
    queries per example; p_init 0.8 (linf) or 0.1 (l2) as AutoAttack."""
    if p_init is None:
        p_init = 0.8 if norm == "linf" else 0.1
    generator = torch.Generator().manual_seed(seed)
    x = inputs.detach()
    delta = initial_perturbation(x, eps, norm, generator)
    best = (x + delta).clamp(0, 1) - x
    best_margin = margin(model(x + best), labels)
    for iteration in range(1, n_queries):
        alive = best_margin > 0
        if not alive.any():
            break
        index = alive.nonzero()[:, 0]
        fraction = square_fraction(p_init, iteration, n_queries)
        candidate = propose(x[index], best[index], eps, norm, fraction, generator)
        candidate = (x[index] + candidate).clamp(0, 1) - x[index]
        candidate_margin = margin(model(x[index] + candidate), labels[index])
        better = candidate_margin < best_margin[index]
        best[index[better]] = candidate[better]
        best_margin[index[better]] = candidate_margin[better]
    return x + best
