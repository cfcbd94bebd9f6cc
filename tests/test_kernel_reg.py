"""The kernel-perspective regularizers, checked numerically: penalties and their parameter
gradients against brute force and finite differences, the per-class ascent, spectral norms
against the SVD of explicit matrices, projections against their scheduled radius."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.attacks import per_example_norm, pgd_linf
from trainables.core.methods import Combined, StepContext, build_method
from trainables.core.methods.adv_perturbation import class_ascent, perturbation_penalty
from trainables.core.methods.gradient_penalty import steepest_examples, supremum_gradient_penalty
from trainables.core.methods.loss_gradients import loss_and_input_gradient
from trainables.core.presets import PRESETS
from trainables.core.schema import parse
from trainables.core.settings import TrainConfig
from trainables.core.spectral import layer_maps, power_iteration, record_input_shapes, spectral_layers

CTX = StepContext(epoch=0, step=0, generator=torch.Generator().manual_seed(0))
K = 3


def tiny_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, K)).double()


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                         nn.Tanh(), nn.Flatten(), nn.Linear(4 * 3 * 3, K)).double()


def batch(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(n, 1, 2, 3, dtype=torch.float64), torch.randint(0, K, (n,))


def input_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[i, k, ...] = grad_x f_k(x_i), example by example."""
    return torch.stack([torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0))[0], xi) for xi in x])


def parameter_gradient_matches_fd(model: nn.Module, loss_fn, h: float = 1e-6) -> None:
    model.zero_grad()
    loss_fn().backward()
    weight = model[1].weight
    for index in [(0, 0), (3, 2), (6, 5)]:
        weight.data[index] += h
        up = loss_fn().item()
        weight.data[index] -= 2 * h
        down = loss_fn().item()
        weight.data[index] += h
        assert weight.grad[index].item() == pytest.approx((up - down) / (2 * h), rel=1e-4, abs=1e-8)


def test_gradient_penalty_is_the_per_class_supremum_of_squared_input_gradients() -> None:
    model, (x, _) = tiny_mlp(), batch()
    norms = input_jacobian(model, x).flatten(2).pow(2).sum(2)  # [i, k]
    assert steepest_examples(model, x, K).tolist() == norms.argmax(0).tolist()
    torch.testing.assert_close(supremum_gradient_penalty(model, x, K), norms.max(0).values.sum())
    parameter_gradient_matches_fd(model, lambda: supremum_gradient_penalty(model, x, K))


def test_gradient_penalty_method_adds_lambda_times_the_penalty() -> None:
    model, (x, y) = tiny_mlp(), batch()
    loss = build_method("gradient_penalty", {"lambda": 0.3}).loss(model, x, y, CTX)
    torch.testing.assert_close(loss, F.cross_entropy(model(x), y) + 0.3 * supremum_gradient_penalty(model, x, K))


def test_loss_gradl1_is_the_l1_norm_of_the_input_gradient_over_n() -> None:
    model, (x, y) = tiny_mlp(), batch()
    ce, grad = loss_and_input_gradient(model, x, y)
    h = 1e-6
    fd = torch.zeros_like(x).view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        up, down = (F.cross_entropy(model(x + s * e), y, reduction="sum") for s in (1, -1))
        fd[i] = (up - down) / (2 * h)
    method = build_method("loss_gradl1", {"lambda": 0.5})
    expected = ce + 0.5 * fd.abs().sum() / len(x)
    torch.testing.assert_close(method.loss(model, x, y, CTX), expected, rtol=1e-6, atol=1e-9)
    parameter_gradient_matches_fd(model, lambda: method.loss(model, x, y, CTX))


def test_class_ascent_raises_each_class_objective_and_stays_in_the_ball() -> None:
    model, (x, _) = tiny_mlp(), batch()
    deltas = class_ascent(model, x, K, eps=0.5, steps=5)
    assert float(per_example_norm(deltas.flatten(0, 1)).max()) <= 0.5 + 1e-9
    with torch.no_grad():
        for k in range(K):
            assert bool((model(x + deltas[k])[:, k] > model(x)[:, k]).all())


def test_perturbation_penalty_keeps_the_argmax_example_per_class() -> None:
    model, (x, _) = tiny_mlp(), batch()
    deltas = class_ascent(model, x, K, eps=0.5, steps=5)
    with torch.no_grad():
        gains = torch.stack([model(x + deltas[k])[:, k] - model(x)[:, k] for k in range(K)])  # [k, i]
    expected = gains.max(1).values.pow(2).sum()
    torch.testing.assert_close(perturbation_penalty(model, x, K, eps=0.5, steps=5), expected)
    chosen = gains.argmax(1)

    def penalty_at_fixed_deltas() -> torch.Tensor:
        return sum((model(x[i:i + 1] + deltas[k, i]) - model(x[i:i + 1]))[0, k] ** 2
                   for k, i in enumerate(chosen.tolist()))

    model.zero_grad()
    perturbation_penalty(model, x, K, eps=0.5, steps=5).backward()
    autograd = model[1].weight.grad.clone()
    model.zero_grad()
    penalty_at_fixed_deltas().backward()
    torch.testing.assert_close(autograd, model[1].weight.grad)
    parameter_gradient_matches_fd(model, penalty_at_fixed_deltas)


def test_pgd_linf_stays_in_the_box_and_raises_the_loss() -> None:
    model, (x, y) = tiny_mlp(), batch(16)
    for generator in (None, torch.Generator().manual_seed(0)):
        x_adv = pgd_linf(model, x, y, eps=0.05, steps=10, step_size=0.01, generator=generator)
        assert float((x_adv - x).abs().max()) <= 0.05 + 1e-12
        assert 0.0 <= float(x_adv.min()) and float(x_adv.max()) <= 1.0
        with torch.no_grad():
            assert float(F.cross_entropy(model(x_adv), y)) > float(F.cross_entropy(model(x), y))


def explicit_matrix(forward, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix of a linear map, column by column from the unit vectors."""
    n = math.prod(shape)
    basis = torch.eye(n, dtype=torch.float64).view(n, *shape)
    return torch.stack([forward(e).reshape(-1) for e in basis], dim=1)


def test_power_iteration_converges_to_the_svd_value() -> None:
    weight = torch.randn(6, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    forward, adjoint, shape = layer_maps(nn.Conv2d(4, 6, 3), weight, "reshaped", None)
    u, v = power_iteration(forward, adjoint, torch.ones(shape, dtype=torch.float64), 300)
    expected = torch.linalg.matrix_norm(weight.reshape(6, -1), ord=2)
    torch.testing.assert_close((u * forward(v)).sum(), expected, rtol=1e-8, atol=0)


@pytest.mark.parametrize("stride", [1, 2])
def test_operator_mode_is_the_norm_of_the_explicit_convolution_matrix(stride: int) -> None:
    layer = nn.Conv2d(2, 3, 3, stride=stride, padding=1).double()
    forward, adjoint, shape = layer_maps(layer, layer.weight.detach(), "operator", (2, 5, 5))
    matrix = explicit_matrix(forward, shape)
    out_shape = forward(torch.zeros(shape, dtype=torch.float64)).shape
    torch.testing.assert_close(explicit_matrix(adjoint, tuple(out_shape)), matrix.T)
    u, v = power_iteration(forward, adjoint, torch.ones(shape, dtype=torch.float64), 500)
    sigma = (u * forward(v)).sum()
    torch.testing.assert_close(sigma, torch.linalg.matrix_norm(matrix, ord=2), rtol=1e-6, atol=0)
    reshaped = torch.linalg.matrix_norm(layer.weight.detach().reshape(3, -1), ord=2)
    assert abs(float(sigma - reshaped)) > 1e-3, "the reference's reshaped norm is a different number"


def operator_norms(model: nn.Module, shapes: dict, mode: str) -> list[float]:
    norms = []
    for name, layer in spectral_layers(model).items():
        if mode == "reshaped" or isinstance(layer, nn.Linear):
            matrix = layer.weight.detach().reshape(layer.weight.shape[0], -1)
            norms.append(float(torch.linalg.matrix_norm(matrix, ord=2)))
        else:
            forward = layer_maps(layer, layer.weight.detach(), mode, shapes[name])[0]
            norms.append(float(torch.linalg.matrix_norm(explicit_matrix(forward, shapes[name]), ord=2)))
    return norms


def test_the_sn_radius_and_the_lr_steps_follow_the_reference_epoch_numbering() -> None:
    """kernel_reg main.py: `for epoch in range(scheduler.last_epoch + 1, 501)` after a fresh
    StepLR (last_epoch 0), `scheduler.step()` first in each epoch, tau * (1 + 4 exp(-epoch /
    kappa)) after each step: epochs 1 .. 500, the first radius 3.43 tau at kappa 2."""
    sn = build_method("clean+sn_projection", {"tau": 1.0, "kappa": 2.0}).parts[1]
    assert sn.radius(0) == pytest.approx(1 + 4 * math.exp(-0.5)) == pytest.approx(3.4261, abs=1e-4)
    train = parse(TrainConfig, PRESETS.get("cifar10small1000_vgg")["train"], "train")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    reference = torch.optim.lr_scheduler.StepLR(optimizer, step_size=40, gamma=0.5)
    for epoch in range(500):  # the project's 0-based epoch; the reference's is epoch + 1
        reference.step()
        assert train.schedule.multiplier(epoch + 0.5) == pytest.approx(optimizer.param_groups[0]["lr"]), epoch
    assert train.epochs == 500


@pytest.mark.parametrize("mode", ["reshaped", "operator"])
def test_sn_projection_keeps_every_weight_within_the_scheduled_radius(mode: str) -> None:
    model = tiny_cnn()
    x, y = torch.rand(8, 2, 5, 5, dtype=torch.float64), torch.randint(0, K, (8,))
    method = build_method("clean+sn_projection", {"tau": 0.3, "kappa": 2.0, "sn_mode": mode, "weight_decay": 0.0})
    with torch.no_grad():
        for layer in spectral_layers(model).values():
            layer.weight.mul_(10.0)  # far outside the radius, so the projection must act
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    shapes = record_input_shapes(model, x)
    for epoch in range(3):
        ctx = StepContext(epoch=epoch, step=epoch, generator=torch.Generator().manual_seed(0))
        radius = 0.3 * (1 + 4 * math.exp(-(epoch + 1) / 2.0))  # the reference's epochs count from 1
        assert method.parts[1].radius(epoch) == pytest.approx(radius)
        optimizer.zero_grad()
        method.loss(model, x, y, ctx).backward()
        optimizer.step()
        method.after_step(model, ctx)
        norms = operator_norms(model, shapes, mode)
        assert max(norms) <= radius + 1e-4, (epoch, norms)
        assert min(norms) >= radius - 1e-3, "every weight was clipped to the radius"


@pytest.mark.parametrize("mode", ["reshaped", "operator"])
def test_sn_penalty_is_lambda_times_squared_norms_with_matching_gradient(mode: str) -> None:
    model = tiny_cnn()
    x = torch.rand(4, 2, 5, 5, dtype=torch.float64)
    penalty = build_method("clean+sn_penalty", {"lambda_sn": 0.2, "svd": True, "sn_mode": mode}).parts[1]
    value = penalty.penalty(model, x, CTX)
    norms = operator_norms(model, record_input_shapes(model, x), mode)
    assert value.item() == pytest.approx(0.2 * sum(n * n for n in norms), rel=1e-6)
    value.backward()
    conv = model[0].weight
    h = 1e-6
    for index in [(0, 0, 0, 0), (2, 1, 1, 2)]:
        values = []
        for sign in (1, -1):
            conv.data[index] += sign * h
            values.append(0.2 * sum(n * n for n in operator_norms(model, record_input_shapes(model, x), mode)))
            conv.data[index] -= sign * h
        assert conv.grad[index].item() == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-4, abs=1e-7)


def test_sn_penalty_power_iteration_warm_starts_and_is_checkpointed() -> None:
    model = tiny_cnn()
    x = torch.rand(4, 2, 5, 5, dtype=torch.float64)
    method = build_method("clean+sn_penalty", {"lambda_sn": 1.0, "iterations": 2})
    assert isinstance(method, Combined)
    exact = sum(n * n for n in operator_norms(model, {}, "reshaped"))
    values = [float(method.parts[1].penalty(model, x, CTX)) for _ in range(40)]
    assert values[0] < values[-1] and values[-1] == pytest.approx(exact, rel=1e-6), "persistent vectors converge"
    restored = build_method("clean+sn_penalty", {"lambda_sn": 1.0, "iterations": 2})
    restored.load_state_dict(method.state_dict())
    after_restore = float(restored.parts[1].penalty(model, x, CTX))
    assert after_restore == float(method.parts[1].penalty(model, x, CTX)), "the restore continues the same iteration"
    y = torch.randint(0, K, (4,))
    torch.testing.assert_close(method.loss(model, x, y, CTX),
                               F.cross_entropy(model(x), y) + method.parts[1].penalty(model, x, CTX))
