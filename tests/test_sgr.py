"""The SGR family, checked numerically: Sigma g by convolution against the explicit matrix, the
running estimate against a direct computation, SGR with Sigma = I against GN, penalties and
their gradients against finite differences, LRC noise against its covariance, DeepFool against
the analytic distance of a linear model, and the baselines' losses against their definitions."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.test_methods import input_gradient_fd
from trainables.core.attacks import deepfool, fgm, fgsm, per_example_norm, pgd_l2
from trainables.core.covariance import (
    DisplacementCovariance,
    FullCovariance,
    LrcNoise,
    dense_from_functions,
    num_radii,
    pixel_radii,
)
from trainables.core.data import DataBundle, DatasetInfo
from trainables.core.evaluation import AttackEval, EvalConfig, NoiseEval, curve_area, evaluate
from trainables.core.methods import StepContext, build_method
from trainables.core.methods.loss_gradients import loss_and_input_gradient
from trainables.core.registry import ConfigError

SHAPE = (3, 5, 4)
K = 3


def ctx(step: int = 0) -> StepContext:
    return StepContext(epoch=0, step=step, generator=torch.Generator().manual_seed(0))


def tiny_cnn(channels: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(4 * 5 * 4, K)).double()


def direct_functions(xi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The covariance functions by brute force: the explicit raw second-moment matrix, averaged
    over all entries at each rounded pixel distance, within and across channels."""
    flat = xi.flatten(1)
    matrix = flat.T @ flat / len(flat)
    channels, hw = xi.shape[1], xi.shape[2] * xi.shape[3]
    radii = pixel_radii(tuple(xi.shape[1:]))
    same_channel = torch.eye(channels, dtype=torch.bool).repeat_interleave(hw, 0).repeat_interleave(hw, 1)
    r = radii.repeat(channels, channels)
    intra = torch.stack([matrix[same_channel & (r == k)].mean() for k in range(num_radii(xi.shape[1:]))])
    inter = torch.stack([matrix[~same_channel & (r == k)].mean() for k in range(num_radii(xi.shape[1:]))])
    return intra, inter


def explicit_matrix(intra: torch.Tensor, inter: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Sigma_ij = c(round(||p_i - p_j||)) entry by entry, without any of the module's helpers."""
    channels, h, w = shape
    d = channels * h * w
    sigma = torch.empty(d, d, dtype=intra.dtype)
    for i in range(d):
        ci, pi = divmod(i, h * w)
        for j in range(d):
            cj, pj = divmod(j, h * w)
            (yi, xi), (yj, xj) = divmod(pi, w), divmod(pj, w)
            r = round(((yi - yj) ** 2 + (xi - xj) ** 2) ** 0.5)
            sigma[i, j] = intra[r] if ci == cj else inter[r]
    return sigma


def test_the_convolutional_sigma_g_equals_the_explicit_matrix_product() -> None:
    torch.manual_seed(0)
    cov = DisplacementCovariance(SHAPE)
    intra, inter = torch.rand(cov.num_radii, dtype=torch.float64), torch.rand(cov.num_radii, dtype=torch.float64)
    cov.set_function(intra, inter)
    g = torch.randn(4, *SHAPE, dtype=torch.float64)
    sigma = explicit_matrix(intra, inter, SHAPE)
    torch.testing.assert_close(cov.apply(g), (g.flatten(1) @ sigma).view_as(g))
    torch.testing.assert_close(dense_from_functions(SHAPE, intra, inter), sigma)
    torch.testing.assert_close(cov.mean_diagonal(), sigma.diagonal().mean())


@pytest.mark.parametrize("form", ["full", "displacement"])
def test_the_running_estimate_equals_a_direct_computation(form: str) -> None:
    torch.manual_seed(0)
    batches = [torch.randn(6, *SHAPE, dtype=torch.float64) for _ in range(3)]
    beta = 0.3
    cov = (FullCovariance if form == "full" else DisplacementCovariance)(SHAPE)
    for xi in batches:
        cov.update(xi, beta)

    def blended(estimate):  # S_1 = batch 1, S_t = (1 - beta) S_{t-1} + beta * batch t
        value = estimate(batches[0])
        for xi in batches[1:]:
            value = (1 - beta) * value + beta * estimate(xi)
        return value

    if form == "full":
        torch.testing.assert_close(cov.stats["matrix"], blended(lambda xi: xi.flatten(1).T @ xi.flatten(1) / len(xi)))
    else:
        torch.testing.assert_close(cov.stats["intra"], blended(lambda xi: direct_functions(xi)[0]))
        torch.testing.assert_close(cov.stats["inter"], blended(lambda xi: direct_functions(xi)[1]))
    torch.testing.assert_close(cov.mean.flatten(), blended(lambda xi: xi.flatten(1).mean(0)))


def test_the_data_covariance_is_the_centered_covariance_of_the_inputs() -> None:
    torch.manual_seed(0)
    x = torch.rand(50, *SHAPE, dtype=torch.float64)
    full = FullCovariance(SHAPE)
    full.centered_estimate(lambda: iter(x.split(16)))
    torch.testing.assert_close(full.stats["matrix"].double(), torch.cov(x.flatten(1).T, correction=0),
                               rtol=1e-5, atol=1e-6)
    displacement = DisplacementCovariance(SHAPE)
    displacement.centered_estimate(lambda: iter(x.split(16)))
    intra, _ = direct_functions(x - x.mean(0))
    torch.testing.assert_close(displacement.stats["intra"].double(), intra, rtol=1e-5, atol=1e-6)


def test_sgr_with_the_identity_equals_gn() -> None:
    model = tiny_cnn()
    x, y = torch.rand(5, *SHAPE, dtype=torch.float64), torch.tensor([0, 1, 2, 1, 0])
    losses, grads = [], []
    for name, hparams in [("gn", {"lambda": 0.7}), ("sgr", {"lambda": 0.7, "covariance": "identity"})]:
        model.zero_grad()
        loss = build_method(name, hparams).loss(model, x, y, ctx())
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(grads[0], grads[1])
    ce, _ = loss_and_input_gradient(model, x, y)
    g = input_gradient_fd(model, x, y)
    torch.testing.assert_close(losses[0], ce.detach() + 0.7 * 0.5 * g.pow(2).sum() / 5, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("form", ["full", "displacement"])
@pytest.mark.parametrize("centered", [True, False])
def test_the_sgr_penalty_and_its_parameter_gradient_against_finite_differences(form: str, centered: bool) -> None:
    model = tiny_cnn()
    x, y = torch.rand(4, *SHAPE, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    method = build_method("sgr", {"lambda": 2.0, "sigma_form": form, "centered": centered,
                                  "update_every": 1000, "source": "grad"})
    method.loss(model, x, y, ctx(0))  # estimates Sigma from this batch; later steps keep it
    cov = method.covariance
    cov.stats = {k: v.double() for k, v in cov.stats.items()}
    scale = 1 / cov.mean_diagonal()
    g = input_gradient_fd(model, x, y)
    sigma_g = cov.apply(g) * scale
    expected = F.cross_entropy(model(x), y) + 2.0 * 0.5 * (g * sigma_g).sum() / 4
    if not centered:
        expected = expected + 2.0 * (g * cov.mean * scale ** 0.5).sum() / 4
    loss = method.loss(model, x, y, ctx(1))
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-6, atol=1e-9)

    weight = model[3].weight
    (analytic,) = torch.autograd.grad(loss, weight)
    h = 1e-6
    for index in [(0, 0), (1, 7), (2, 40)]:
        original = weight.data[index].item()
        values = []
        for shift in (h, -h):
            weight.data[index] = original + shift
            values.append(method.loss(model, x, y, ctx(1)).item())
        weight.data[index] = original
        assert analytic[index].item() == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("source", ["grad", "sign", "fgsm", "pgd"])
def test_every_source_gives_perturbations_of_its_kind(source: str) -> None:
    model = tiny_cnn()
    x, y = torch.rand(4, *SHAPE, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    method = build_method("sgr", {"source": source, "eps": 0.05})
    _, g = loss_and_input_gradient(model, x, y)
    xi = method.perturbations(model, x, y, g.detach(), ctx())
    if source == "grad":
        torch.testing.assert_close(per_example_norm(xi).flatten(), torch.ones(4, dtype=torch.float64))
    elif source == "sign":
        assert set(xi.unique().tolist()) <= {-1.0, 0.0, 1.0}
    else:
        assert xi.abs().max() <= 0.05 + 1e-12 and ((x + xi) >= 0).all() and ((x + xi) <= 1).all()
        assert (xi * g).sum() > 0, "the perturbation raises the loss"


def test_sgr_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ConfigError, match="source: 'svd' is not allowed"):
        build_method("sgr", {"source": "svd"})
    with pytest.raises(ConfigError, match="beta: must be <= 1.0, got 1.5"):
        build_method("sgr", {"beta": 1.5})
    with pytest.raises(ConfigError, match="zeta: must be >= 0.01, got 0"):
        build_method("sgr", {"covariance": "exponential", "zeta": 0})
    with pytest.raises(ConfigError, match="sigma_form: full needs a 12288 x 12288"):
        FullCovariance((3, 64, 64))


def test_the_sgr_state_resumes_the_running_estimate() -> None:
    model = tiny_cnn()
    x, y = torch.rand(4, *SHAPE, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    method = build_method("sgr", {})
    method.loss(model, x, y, ctx(0))
    resumed = build_method("sgr", {})
    resumed.covariance = resumed.make_covariance(SHAPE, torch.device("cpu"))
    resumed.load_state_dict(method.state_dict())
    torch.testing.assert_close(resumed.loss(model, x, y, ctx(1)), method.loss(model, x, y, ctx(1)))


def test_lrc_samples_have_the_requested_covariance() -> None:
    shape, zeta = (2, 3, 4), 2.0
    noise = LrcNoise(shape, zeta)
    samples = noise.sample(200_000, torch.Generator().manual_seed(0)).flatten(1).double()
    empirical = samples.T @ samples / len(samples)
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(4), indexing="ij")
    points = torch.stack([rows.flatten(), cols.flatten()], 1).double()
    spatial = torch.exp(-torch.cdist(points, points) / zeta)
    channel = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    assert (empirical - torch.kron(channel, spatial)).abs().max() < 0.02
    scaled = noise.sample_scaled(10, 1.5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(per_example_norm(scaled).flatten(), torch.full((10,), 1.5))


def test_worst_of_k_accuracy_never_exceeds_single_sample_accuracy() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 4, K))
    x = (torch.rand(300, *SHAPE) * 255).to(torch.uint8)
    y = model(x.float() / 255).argmax(1)  # every clean example is correct
    info = DatasetInfo("toy", K, SHAPE, (0.5,) * 3, (0.5,) * 3)
    data = DataBundle(info, x[:0], y[:0], x[:0], y[:0], x, y)
    accuracies = {}
    for k in (1, 5, 25):
        items = [NoiseEval(noise="lrc", eps=[1.0], zeta=[1.0, 8.0], k=k), NoiseEval(noise="uniform", eps=[0.2], k=k)]
        accuracies[k] = evaluate(model, data, EvalConfig(examples=None, items=items))
    for name in ["lrc_zeta1_eps1_acc", "lrc_zeta8_eps1_acc", "uniform_eps0.2_acc"]:
        assert accuracies[1]["clean_acc"] == 1.0
        assert accuracies[25][name] <= accuracies[5][name] <= accuracies[1][name] < 1.0, (name, accuracies)
    assert accuracies[25]["lrc_zeta1_eps1_acc"] < accuracies[1]["lrc_zeta1_eps1_acc"]


def test_deepfool_flips_a_linear_model_at_the_analytic_distance() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double()
    x = torch.rand(8, 1, 2, 3, dtype=torch.float64)
    r = deepfool(model, x, overshoot=0.02)
    logits = model(x)
    original = logits.argmax(1)
    weight = model[1].weight
    for i in range(len(x)):
        k0 = original[i]
        w = weight - weight[k0]
        distances = (logits[i] - logits[i, k0]).abs() / w.norm(dim=1)
        distances[k0] = float("inf")
        nearest = int(distances.argmin())
        expected = 1.02 * (distances[nearest] + 1e-4 / w[nearest].norm())
        assert r[i].norm().item() == pytest.approx(expected.item(), rel=1e-9)
        assert model(x[i:i + 1] + r[i:i + 1]).argmax(1).item() == nearest


def test_one_step_and_targeted_attacks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, K)).double()
    x = 0.25 + 0.5 * torch.rand(8, 1, 2, 3, dtype=torch.float64)  # far from the box's faces
    y = torch.randint(0, K, (8,))
    delta = fgsm(model, x, y, eps=0.1) - x
    torch.testing.assert_close(delta.abs(), torch.full_like(x, 0.1))
    torch.testing.assert_close(per_example_norm(fgm(model, x, y, eps=0.2) - x).flatten(), torch.full((8,), 0.2,
                               dtype=torch.float64))
    target = (y + 1) % K
    x_adv = pgd_l2(model, x, y, eps=0.5, steps=10, step_size=0.1, target=target)
    before = F.cross_entropy(model(x), target, reduction="none")
    after = F.cross_entropy(model(x_adv), target, reduction="none")
    assert (after < before).all(), "a targeted attack lowers the target's loss"
    with pytest.raises(ConfigError, match="fgsm takes one step"):
        AttackEval(attack="fgsm", eps=[0.1], steps=5).check("eval.items[0]")


def test_the_area_under_the_accuracy_curve() -> None:
    assert curve_area(0.9, [0.5, 1.0], [0.5, 0.1]) == pytest.approx((0.5 * 0.7 + 0.5 * 0.3) / 1.0)
    assert curve_area(1.0, [2.0], [1.0]) == pytest.approx(1.0)


def test_the_mixture_baselines_craft_on_predicted_labels() -> None:
    model = tiny_cnn()
    x, y = torch.rand(4, *SHAPE, dtype=torch.float64), torch.tensor([0, 1, 2, 1])
    loss = build_method("fgsm_at", {"epsilon": 0.05, "mix": 0.3}).loss(model, x, y, ctx())
    predicted = model(x).argmax(1)
    x_adv = fgsm(model, x, predicted, eps=0.05)
    expected = 0.7 * F.cross_entropy(model(x), y) + 0.3 * F.cross_entropy(model(x_adv), y)
    torch.testing.assert_close(loss, expected)
