"""The methods of the first three: declarations, loss_gradl2 against finite differences, PGD
training on adversarial examples, weight decay reaching the optimizer."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from trainables.core.attacks import pgd_l2
from trainables.core.methods import METHODS, StepContext, build_method
from trainables.core.methods.loss_gradients import loss_and_input_gradient
from trainables.core.registry import ConfigError
from trainables.core.settings import TrainConfig
from trainables.core.train import make_optimizer

CTX = StepContext(epoch=0, step=0, generator=torch.Generator().manual_seed(0))


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).double()


def summed_ce(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y, reduction="sum")


def input_gradient_fd(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    grad = torch.zeros_like(x)
    flat = grad.view(-1)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = h
        e = e.view_as(x)
        flat[i] = (summed_ce(model, x + e, y) - summed_ce(model, x - e, y)) / (2 * h)
    return grad


def test_loss_gradl2_penalty_is_the_squared_input_gradient_norm_over_n() -> None:
    model = tiny_model()
    x = torch.rand(4, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    _, grad = loss_and_input_gradient(model, x, y)
    penalty = grad.pow(2).sum() / 4
    expected = input_gradient_fd(model, x, y).pow(2).sum() / 4
    torch.testing.assert_close(penalty, expected, rtol=1e-6, atol=1e-9)


def test_loss_gradl2_parameter_gradient_matches_finite_differences() -> None:
    model = tiny_model()
    x = torch.rand(4, 1, 2, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 2])
    method = build_method("loss_gradl2", {"lambda": 0.7})
    method.loss(model, x, y, CTX).backward()
    weight = model[1].weight
    h = 1e-6
    for index in [(0, 0), (2, 3), (4, 5)]:
        weight.data[index] += h
        up = method.loss(model, x, y, CTX).item()
        weight.data[index] -= 2 * h
        down = method.loss(model, x, y, CTX).item()
        weight.data[index] += h
        assert weight.grad[index].item() == pytest.approx((up - down) / (2 * h), rel=1e-5, abs=1e-8)


def test_loss_gradl2_adds_lambda_times_penalty_to_the_cross_entropy() -> None:
    model = tiny_model()
    x, y = torch.rand(4, 1, 2, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 2])
    ce, grad = loss_and_input_gradient(model, x, y)
    loss = build_method("loss_gradl2", {"lambda": 2.5}).loss(model, x, y, CTX)
    torch.testing.assert_close(loss, ce + 2.5 * grad.pow(2).sum() / 4)


def test_pgd_l2_training_loss_is_the_loss_on_reference_pgd_examples() -> None:
    model = tiny_model()
    x, y = torch.rand(8, 1, 2, 3, dtype=torch.float64), torch.randint(0, 3, (8,))
    loss = build_method("pgd_l2", {"epsilon": 0.5, "steps": 4}).loss(model, x, y, CTX)
    x_adv = pgd_l2(model, x, y, eps=0.5, steps=4, step_size=1.5 * 0.5 / 4)
    torch.testing.assert_close(loss, F.cross_entropy(model(x_adv), y))
    assert loss.item() > F.cross_entropy(model(x), y).item()


def test_clean_weight_decay_reaches_the_optimizer() -> None:
    model = tiny_model()
    train = TrainConfig(epochs=1)
    assert make_optimizer(model, train, build_method("clean", {"weight_decay": 3e-4})).param_groups[0][
        "weight_decay"] == 3e-4
    assert make_optimizer(model, train, build_method("pgd_l2", {})).param_groups[0]["weight_decay"] == 0.0


def test_every_method_declares_searchable_hyperparameters_with_sources() -> None:
    for name in METHODS:
        method = METHODS.get(name)
        assert method.source
        for param in method.params.values():
            if param.searchable and param.choices is None:
                assert param.low < param.high and (not param.log or param.low > 0)


def test_bad_hyperparameters_are_refused_with_their_name() -> None:
    with pytest.raises(ConfigError, match=r"method pgd_l2.eps: unknown hyperparameter of pgd_l2; allowed: epsilon"):
        build_method("pgd_l2", {"eps": 1.0})
    with pytest.raises(ConfigError, match=r"method pgd_l2.steps: must be >= 1"):
        build_method("pgd_l2", {"steps": 0})
    with pytest.raises(ConfigError, match=r"unknown method 'trades'; allowed: adv_perturbation_penalty, clean"):
        build_method("trades", {})
