"""The Lipschitz layer families, checked numerically: the Cayley map against orthonormality,
every layer's Jacobian (explicit, by autograd) against its bound, the FFT convolution against a
direct circular convolution, and the eval-mode cache against a fresh parameterization."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from trainables.core.layers import LAYERS, apply_spectrum, cayley, kernel_spectrum, space_to_depth
from trainables.core.layers.sll import SllConv, SllFc

TOLERANCE = 1e-4


def jacobian_norm(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """The largest singular value of the layer's Jacobian at x (one example)."""
    jacobian = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0], x)
    return float(torch.linalg.matrix_norm(jacobian.reshape(-1, x.numel()), ord=2))


def perturbed(layer: torch.nn.Module) -> torch.nn.Module:
    """Move every parameter away from its initialization, so the bound is not checked only there."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return layer.double()


@pytest.mark.parametrize("dtype", [torch.float64, torch.complex128])
@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (3, 6, 2)])
def test_cayley_outputs_have_orthonormal_columns(dtype: torch.dtype, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    q = cayley(torch.randn(*shape, dtype=dtype))
    gram = q.conj().transpose(-2, -1) @ q if shape[-2] >= shape[-1] else q @ q.conj().transpose(-2, -1)
    eye = torch.eye(gram.shape[-1], dtype=dtype).expand_as(gram)
    torch.testing.assert_close(gram, eye)


def test_the_fft_convolution_is_the_circular_convolution_with_the_same_kernel() -> None:
    torch.manual_seed(0)
    for kernel_size in (1, 3, 5):
        kernel = torch.randn(5, 3, kernel_size, kernel_size, dtype=torch.float64)
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
        pad = kernel_size // 2
        direct = F.conv2d(F.pad(x, (pad,) * 4, mode="circular"), kernel)
        torch.testing.assert_close(apply_spectrum(kernel_spectrum(kernel, 8), x), direct)


def test_space_to_depth_is_a_permutation() -> None:
    x = torch.randn(2, 3, 6, 4)
    y = space_to_depth(x)
    assert y.shape == (2, 12, 3, 2)
    torch.testing.assert_close(y.flatten().sort().values, x.flatten().sort().values)
    assert torch.equal(y[0, :4, 0, 0], torch.stack([x[0, 0, 0, 0], x[0, 0, 0, 1], x[0, 0, 1, 0], x[0, 0, 1, 1]]))


CERTIFIED = [name for name in LAYERS if LAYERS.get(name).certified]


@pytest.mark.parametrize("family", CERTIFIED)
@pytest.mark.parametrize("kind", ["fc", "lin", "conv", "conv_stride2"])
@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_every_layer_jacobian_is_within_its_bound(family: str, kind: str, scale: float) -> None:
    builders = LAYERS.get(family)
    if kind == "conv_stride2" and builders.downsample == "pool":
        with pytest.raises(ValueError, match="stride 1"):
            builders.conv(2, 3, 4, 2, scale)
        return
    torch.manual_seed(0)
    if kind in ("fc", "lin"):
        layer = perturbed(getattr(builders, kind)(6, 5, scale))
        inputs = [torch.randn(6, dtype=torch.float64) for _ in range(3)]
    else:
        layer = perturbed(builders.conv(2, 3, 4, 2 if kind == "conv_stride2" else 1, scale))
        inputs = [torch.randn(2, 4, 4, dtype=torch.float64) for _ in range(3)]
    norms = [jacobian_norm(layer, x) for x in inputs]
    assert max(norms) <= scale + TOLERANCE, norms
    assert max(norms) > 0.2 * scale, "the layer is not trivially contracting"


def test_the_sum_pooling_of_pooled_kwl_networks_is_exactly_1_lipschitz() -> None:
    pooling = torch.nn.AvgPool2d(4, divisor_override=4)
    x = torch.randn(3, 8, 8, dtype=torch.float64)
    jacobian = torch.autograd.functional.jacobian(pooling, x).reshape(3 * 2 * 2, -1)
    assert torch.linalg.matrix_norm(jacobian, ord=2).item() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("layer", [SllFc(6, 9), SllConv(2, 3)])
def test_sll_layers_are_1_lipschitz(layer: torch.nn.Module) -> None:
    layer = perturbed(layer)
    shape = (6,) if isinstance(layer, SllFc) else (2, 5, 5)
    norms = [jacobian_norm(layer, torch.randn(*shape, dtype=torch.float64)) for _ in range(3)]
    assert max(norms) <= 1 + TOLERANCE, norms


@pytest.mark.parametrize("family", CERTIFIED)
def test_the_eval_cache_is_reused_until_a_weight_changes(family: str) -> None:
    layer = LAYERS.get(family).conv(2, 3, 4, 1, 1.0).double()
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    layer.eval()
    first = layer(x)
    cached = layer._cache[1]
    assert layer(x) is not first and layer._cache[1] is cached, "a second eval forward reuses the cache"
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)
    layer.train()
    layer(x).square().sum().backward()
    optimizer.step()
    layer.eval()
    torch.testing.assert_close(layer(x), layer.train()(x), msg="after a step, eval uses the new weights")
    assert all(p.grad is not None for p in layer.parameters()), "every parameter is trained"
