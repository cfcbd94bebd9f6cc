"""Spectral norms of a network's linear maps (conv and linear weights), as kernel_reg measures
them and as they really are.

`reshaped` (the reference): a convolution's weight viewed as the matrix out x (in * kh * kw);
its norm is NOT the convolution's operator norm. `operator`: the norm of the convolution as the
linear map it applies to inputs of the layer's actual size (zero padding, stride), by power
iteration with the convolution and its adjoint (the transposed convolution).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

LinearMap = Callable[[torch.Tensor], torch.Tensor]


def spectral_layers(model: nn.Module) -> dict[str, nn.Conv2d | nn.Linear]:
    """Every conv and linear layer by module name: the weights spectral-norm control acts on."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)}


def record_input_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """The per-example input shape of every spectral layer, from one forward pass on `x[:1]`."""
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(name: str) -> Callable[[nn.Module, tuple], None]:
        def record(module: nn.Module, args: tuple) -> None:
            shapes[name] = tuple(args[0].shape[1:])
        return record

    hooks = [layer.register_forward_pre_hook(recorder(name)) for name, layer in spectral_layers(model).items()]
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return shapes


def layer_maps(layer: nn.Conv2d | nn.Linear, weight: torch.Tensor, mode: str,
               input_shape: tuple[int, ...] | None) -> tuple[LinearMap, LinearMap, tuple[int, ...]]:
    """(A, A^T, the shape of A's input vectors) for a layer with `weight` (bias left out)."""
    if isinstance(layer, nn.Linear) or mode == "reshaped":
        matrix = weight.reshape(weight.shape[0], -1)
        return (lambda v: matrix @ v), (lambda u: matrix.T @ u), (matrix.shape[1],)
    assert input_shape is not None, "operator mode needs the layer's input size"
    conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)

    def forward(v: torch.Tensor) -> torch.Tensor:
        return F.conv2d(v.unsqueeze(0), weight, **conv).squeeze(0)

    out_shape = forward(torch.zeros(input_shape, device=weight.device, dtype=weight.dtype)).shape
    extra = [
        input_shape[1 + d] - ((out_shape[1 + d] - 1) * layer.stride[d] - 2 * layer.padding[d]
                              + layer.dilation[d] * (weight.shape[2 + d] - 1) + 1)
        for d in range(2)
    ]

    def adjoint(u: torch.Tensor) -> torch.Tensor:
        return F.conv_transpose2d(u.unsqueeze(0), weight, output_padding=tuple(extra), **conv).squeeze(0)

    return forward, adjoint, input_shape


def power_iteration(forward: LinearMap, adjoint: LinearMap, v: torch.Tensor, iterations: int,
                    tol: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(u, v), unit top singular vectors estimated by `iterations` steps of v <- A^T A v from the
    warm start `v` (stopping early once sigma changes by less than `tol`, relatively)."""
    with torch.no_grad():
        v = v / v.norm().clamp_min(1e-12)
        sigma = 0.0
        for _ in range(iterations):
            v = adjoint(forward(v))
            v = v / v.norm().clamp_min(1e-12)
            new_sigma = float(forward(v).norm())
            if tol and abs(new_sigma - sigma) <= tol * new_sigma:
                break
            sigma = new_sigma
        u = forward(v)
        u = u / u.norm().clamp_min(1e-12)
    return u, v


def clip_singular_values(weight: torch.Tensor, radius: float) -> torch.Tensor:
    """The weight (as its out x rest matrix) with every singular value clipped at `radius`."""
    matrix = weight.reshape(weight.shape[0], -1)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return ((u * s.clamp(max=radius)) @ vh).reshape(weight.shape)
