"""SOC layers and LipConvNet pieces, checked numerically: the truncated exponential's Jacobian
singular values within the derived remainder, the fast-training gradients against autograd,
and the activations and poolings against distances they must not expand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from trainables.core.attacks import pgd_l2
from trainables.core.data import DataConfig, DatasetInfo, load_data
from trainables.core.evaluation import CertificateCheckEval, CertifiedEval, EvalConfig, run_evaluation
from trainables.core.layers.soc import (
    FastExpSeries,
    HouseholderActivation,
    LipPool,
    MaxMin,
    MaxPool,
    SecondOrderHouseholder,
    SocConv,
    exp_series,
    series_remainder,
)
from trainables.core.methods import StepContext, build_method
from trainables.core.models import ModelConfig, build_model
from trainables.core.models.lipconvnet import input_scale
from trainables.core.models.lipschitz import CurvatureHead
from trainables.core.registry import ConfigError
from trainables.core.settings import RunSettings, TrainConfig
from trainables.core.train import fit


def jacobian(layer: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    full = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0], x)
    return full.reshape(-1, x.numel())


@pytest.mark.parametrize(("cin", "cout", "stride"), [(3, 3, 1), (2, 8, 2), (2, 5, 1)])
@pytest.mark.parametrize("training", [True, False])
def test_soc_singular_values_lie_within_the_series_remainder(cin: int, cout: int, stride: int, training: bool) -> None:
    torch.manual_seed(0)
    layer = SocConv(cin, cout, 4, stride=stride, multiplier=1.0).double()
    with torch.no_grad():
        layer.weight.mul_(3.0)  # a larger L than the rescaling would keep: the bound must follow it
    layer.train(training)
    layer.power_iteration(0)
    singular = torch.linalg.svdvals(jacobian(layer, torch.randn(cin, 4, 4, dtype=torch.float64)))
    terms = layer.train_terms if training else layer.eval_terms
    t = series_remainder(layer.skew_norm(), terms)
    assert 1 - t - 1e-9 <= float(singular.min()) and float(singular.max()) <= 1 + t + 1e-9, (singular, t)
    assert layer.norm_bound() >= float(singular.max()) or training
    if training:
        assert float(singular.max() - singular.min()) > 1e-6, "6 terms are visibly not orthogonal"


@pytest.mark.parametrize("multiplier", [1.0, 0.3, 0.1])
def test_fast_training_gradients_match_autograd_within_the_stated_approximation(multiplier: float) -> None:
    torch.manual_seed(0)
    layer = SocConv(3, 3, 5, multiplier=multiplier).double()
    kernel = layer.kernel().detach()
    sigma = layer.skew_norm()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    upstream = torch.randn_like(x)
    grads = []
    for function in (lambda v, k: exp_series(v, k, 6), lambda v, k: FastExpSeries.apply(v, k, 6)):
        v, k = x.clone().requires_grad_(True), kernel.clone().requires_grad_(True)
        out = function(v, k)
        grads.append((out.detach(), *torch.autograd.grad(out, [v, k], upstream)))
    (out, grad_x, grad_k), (fast_out, fast_x, fast_k) = grads
    torch.testing.assert_close(fast_out, out)
    torch.testing.assert_close(fast_x, grad_x), "the input gradient is exact: (L^i)^T = (-L)^i"
    relative = float((fast_k - grad_k).norm() / grad_k.norm())
    assert relative <= sigma ** 2 / 2, (relative, sigma)  # only the outermost L: second order in sigma


@pytest.mark.parametrize(
    "layer", [MaxMin(), HouseholderActivation(6), SecondOrderHouseholder(6), MaxPool(), LipPool(6)],
    ids=["maxmin", "hh1", "hh2", "maxpool", "lippool"])
def test_activations_and_poolings_never_expand_distances(layer: torch.nn.Module) -> None:
    torch.manual_seed(0)
    layer = layer.double()
    with torch.no_grad():
        for p in layer.parameters():
            p.uniform_(0, 3.1)
    x, y = torch.randn(500, 6, 2, 2, dtype=torch.float64), torch.randn(500, 6, 2, 2, dtype=torch.float64)
    near = x + 1e-3 * torch.randn_like(x)
    for a, b in [(x, y), (x, near)]:
        out = (layer(a) - layer(b)).flatten(1).norm(dim=1)
        assert (out <= (a - b).flatten(1).norm(dim=1) * (1 + 1e-9)).all()
    for point in x[:5]:
        assert float(torch.linalg.matrix_norm(jacobian(layer, point), ord=2)) <= 1 + 1e-9
    if isinstance(layer, MaxMin | HouseholderActivation | SecondOrderHouseholder):
        torch.testing.assert_close(layer(x).flatten(1).norm(dim=1), x.flatten(1).norm(dim=1))


def hh2_by_hand(a: float, b: float, t0: float, t1: float, t2: float) -> tuple[float, float]:
    """singlasahil14/improved_l2_robustness HouseHolder_Order_2 for one pair, written out."""
    t0, t1, t2 = (min(max(t, 0.0), 2 * math.pi) for t in (t0, t1, t2))
    phi = (math.atan2(b, a) - t0 / 2) % (2 * math.pi)
    if phi < t1 / 2:
        return a, b
    if phi < (t1 + t2) / 2:
        return a * math.cos(t0 + t1) + b * math.sin(t0 + t1), a * math.sin(t0 + t1) - b * math.cos(t0 + t1)
    if phi < (t1 + t2 + 2 * math.pi - t1) / 2:
        return a * math.cos(t2) + b * math.sin(t2), -a * math.sin(t2) + b * math.cos(t2)
    return a * math.cos(t0) + b * math.sin(t0), a * math.sin(t0) - b * math.cos(t0)


def test_hh2_matches_the_reference_formula_point_by_point() -> None:
    torch.manual_seed(1)
    layer = SecondOrderHouseholder(8).double()
    with torch.no_grad():
        layer.thetas.uniform_(-0.5, 2 * math.pi + 0.5)  # beyond [0, 2 pi]: the clamp counts
    x = torch.randn(50, 8, dtype=torch.float64)
    out = layer(x)
    for row, mapped in zip(x, out, strict=True):
        for pair in range(4):
            t0, t1, t2 = (float(t) for t in layer.thetas[:, pair])
            expected = hh2_by_hand(float(row[pair]), float(row[pair + 4]), t0, t1, t2)
            assert (float(mapped[pair]), float(mapped[pair + 4])) == pytest.approx(expected, abs=1e-12)


TINY = DatasetInfo("toy", 10, (1, 8, 8), (0.5,), (0.25,))


@pytest.mark.parametrize("head", ["plain", "lln", "mlp"])
@pytest.mark.parametrize(("activation", "pool"), [("maxmin", "max"), ("hh1", "lip")])
def test_a_lipconvnet_never_exceeds_the_product_of_its_layer_bounds(head: str, activation: str, pool: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig("lipconvnet", {"depth": 5, "init_channels": 4, "head": head, "hidden": 16,
                                                   "activation": activation, "pool": pool}), TINY).double()
    model.eval()
    bound = model.lipschitz_bound()
    assert 1.0 <= bound * TINY.std[0] < 1.001, "1 / input_std, then orthogonal SOC layers up to the series remainder"
    features = model.body if head == "plain" else model.body[:-1]
    for _ in range(3):
        x = torch.rand(*TINY.shape, dtype=torch.float64)
        full = torch.autograd.functional.jacobian(lambda v: features(v[None])[0], x, vectorize=True,
                                                  strategy="forward-mode")
        assert float(torch.linalg.matrix_norm(full.reshape(full.shape[0], -1), ord=2)) <= bound * (1 + 1e-6)


@pytest.mark.parametrize("head", ["plain", "lln", "mlp"])
def test_pgd_inside_a_lipconvnet_certificate_never_changes_the_prediction(tiny_fashion_root: Path, head: str) -> None:
    settings = RunSettings(
        data=DataConfig("fashion_mnist", root=str(tiny_fashion_root), subset=200, val=0),
        model=ModelConfig("lipconvnet", {"depth": 5, "init_channels": 4, "head": head, "hidden": 32}),
        train=TrainConfig(epochs=2, batch_size=50, optimizer="adam", lr=1e-2),
        eval=EvalConfig(examples=60, items=[CertifiedEval(eps=[0.05])]),
    )
    data = load_data(settings.data)
    model = fit(settings, build_method("lipschitz", {"cr": 0.1}), data)
    model.eval()
    x = data.test_x[:60].float() / 255
    with torch.no_grad():
        logits, radius = model.certify(x)
    predicted = logits.argmax(1)
    certified = radius > 1e-3
    assert certified.sum() >= 5, f"{int(certified.sum())} certified: train longer for a meaningful check"
    attacked_points = certified.nonzero().squeeze(1)[:16]  # 100 PGD steps each: 16 points keep the test to seconds
    xc, yc, rc = x[attacked_points], predicted[attacked_points], radius[attacked_points]
    eps = (0.999 * rc).view(-1, 1, 1, 1)
    attacked = pgd_l2(model, xc, yc, eps=eps, steps=100, step_size=eps / 10, clip=False)
    with torch.no_grad():
        assert torch.equal(model(attacked).argmax(1), yc), "an attack inside the radius changed a certified prediction"


@pytest.mark.parametrize("head", ["plain", "lln"])
def test_certificate_regularization_rewards_the_true_labels_radius_only(head: str) -> None:
    """singlasahil14/SOC: loss - cr * mean(relu(cert)), cert the true label's margin over the
    best other class, / (sqrt2 L) (plain) or per class pair / (||w_y - w_j|| L) with the
    normalized last rows (LLN): a misclassified point adds nothing."""
    torch.manual_seed(0)
    model = build_model(ModelConfig("lipconvnet", {"depth": 5, "init_channels": 4, "head": head}), TINY).double()
    model.eval()  # no power-iteration step between the forwards below
    x, y = torch.rand(64, *TINY.shape, dtype=torch.float64), torch.randint(0, 10, (64,))
    context = StepContext(epoch=0, step=0, generator=torch.Generator())
    plain = build_method("lipschitz", {"cr": 0.0}).loss(model, x, y, context)
    regularized = build_method("lipschitz", {"cr": 0.5}).loss(model, x, y, context)
    with torch.no_grad():
        z, bound = model(x), model.lipschitz_bound()
        others = torch.arange(10) != y[:, None]
        gaps = z.gather(1, y[:, None]) - z
        if head == "plain":
            by_hand = gaps[others].view(64, 9).min(1).values / (2 ** 0.5 * bound)
        else:
            w = model.body[-1].weight / model.body[-1].weight.norm(dim=1, keepdim=True)
            pair = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)
            by_hand = (gaps[others] / pair[others]).view(64, 9).min(1).values / bound
    wrong = z.argmax(1) != y
    assert wrong.sum() >= 40, "an untrained model: most points misclassified, as in the reference comparison"
    assert float((plain - regularized).detach()) == pytest.approx(0.5 * float(by_hand.clamp(min=0).mean()), rel=1e-9)
    assert (by_hand[wrong] <= 0).all(), "the true label's radius of a misclassified point is negative"
    with torch.no_grad():
        predicted = model.certify(x)[1].mean()
    assert float(predicted) > 2 * float(by_hand.clamp(min=0).mean()), "the predicted class's rewards wrong points"


def test_input_std_divides_the_centred_inputs_and_the_bound_follows() -> None:
    """SOC's model sees (x - mean) / 0.2507 on CIFAR-10 (the mean of the channel stds) and its
    Lipschitz constant gains the factor 1 / 0.2507; `none` keeps the centring alone."""
    cifar = DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    by_hand = (0.2470 + 0.2435 + 0.2616) / 3
    assert input_scale(cifar, "mean") == pytest.approx(by_hand) == pytest.approx(0.2507, abs=1e-4)
    torch.manual_seed(0)
    options = {"depth": 5, "init_channels": 4, "head": "lln"}
    scaled = build_model(ModelConfig("lipconvnet", {**options, "input_std": 0.2}), TINY).double().eval()
    plain = build_model(ModelConfig("lipconvnet", {**options, "input_std": "none"}), TINY).double().eval()
    plain.load_state_dict(scaled.state_dict())
    x = torch.rand(4, *TINY.shape, dtype=torch.float64)
    mean = TINY.mean[0]
    with torch.no_grad():
        torch.testing.assert_close(scaled(x), plain(mean + (x - mean) / 0.2))
    assert scaled.lipschitz_bound() == pytest.approx(plain.lipschitz_bound() / 0.2)
    for bad in ("median", -0.2, [0.2, 0.3], [0.0]):
        with pytest.raises(ConfigError, match=r"model.input_std: .* is not allowed; allowed: reference, mean, none, a "
                                              r"positive number, or a list of 1 positive numbers \(one per channel\)"):
            build_model(ModelConfig("lipconvnet", {**options, "input_std": bad}), TINY)
    per_channel = build_model(ModelConfig("lipconvnet", {**options, "input_std": [0.2]}), TINY).double().eval()
    per_channel.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(per_channel(x), scaled(x))
    assert per_channel.lipschitz_bound() == pytest.approx(scaled.lipschitz_bound())


def scaled_head(features: int, hidden: int, classes: int, scale: float, seed: int = 0) -> CurvatureHead:
    torch.manual_seed(seed)
    head = CurvatureHead(features, hidden, classes).double().eval()
    with torch.no_grad():
        for p in head.parameters():
            p.mul_(scale)
    return head


SIGNS = torch.tensor([1.0, -1.0], dtype=torch.float64)


@pytest.mark.parametrize(("features", "hidden"), [(6, 12), (12, 6)])
def test_pair_curvatures_bound_every_hessian_and_are_the_exact_eigenvalue(features: int, hidden: int) -> None:
    head = scaled_head(features, hidden, 4, 2.0)
    curvatures = head.pair_curvatures()
    w1, w2 = head.linear1.weight.detach(), head.linear2.weight.detach()
    for a, b in [(0, 1), (2, 3), (3, 0)]:
        positive = (w2[a] - w2[b]).clamp_min(0)
        direct = torch.linalg.eigvalsh(w1.T @ torch.diag(positive) @ w1)[-1]
        assert curvatures[a, b].item() == pytest.approx(0.25 * direct.item(), rel=1e-10)
        for _ in range(5):
            z = 3 * torch.randn(features, dtype=torch.float64)
            hessian = torch.autograd.functional.hessian(lambda v, a=a, b=b: head(v[None])[0, [a, b]] @ SIGNS, z)
            eigenvalues = torch.linalg.eigvalsh(hessian)
            assert eigenvalues[-1] <= curvatures[a, b] + 1e-12 and eigenvalues[0] >= -curvatures[b, a] - 1e-12


def test_the_precise_certificate_is_the_distance_when_the_boundary_is_a_hyperplane() -> None:
    """Two classes and one hidden unit: z_0 - z_1 = softplus(w.z + b) - 0.9, zero on the
    hyperplane w.z + b = s = log(exp(0.9) - 1), so the distance is known by hand, and so is the
    dual variable that reaches it: eta = distance / (||w|| sigmoid(s)). Where that eta lies in the
    searched interval [0, 1 / M] (M = ||w||^2 / 4 here) the certificate is the distance; beyond
    it, a lower bound."""
    head = CurvatureHead(3, 1, 2).double().eval()
    w = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    with torch.no_grad():
        head.linear1.weight.copy_(w[None])
        head.linear1.bias.fill_(0.3)
        head.linear2.weight.copy_(torch.tensor([[1.5], [0.5]]))
        head.linear2.bias.copy_(torch.tensor([-0.9, 0.0], dtype=torch.float64))
    torch.manual_seed(0)
    z = torch.randn(200, 3, dtype=torch.float64)
    with torch.no_grad():
        logits, radius = head.precise_radius(z, outer=40, inner=10, taylor=40)
    boundary = math.log(math.exp(0.9) - 1)
    distance = (z @ w + 0.3 - boundary).abs() / w.norm()
    assert head.pair_curvatures()[0, 1].item() == pytest.approx(w.norm().item() ** 2 / 4)
    eta = distance / (w.norm() / (1 + math.exp(-boundary)))
    reachable = (logits.argmax(1) == 0) & (eta < 0.99 / (w.norm() ** 2 / 4))
    assert reachable.sum() >= 20 and (~reachable).sum() >= 20
    assert (radius <= distance * (1 + 1e-9)).all()
    torch.testing.assert_close(radius[reachable], distance[reachable], rtol=1e-4, atol=1e-8)


def test_the_precise_certificate_is_sound_and_tighter_than_the_closed_form() -> None:
    """Against 10 restarts of a boundary search in feature space: no point within the precise
    radius changes class; the precise radius is the larger on most points."""
    head = scaled_head(6, 12, 4, 3.0)
    z = torch.randn(40, 6, dtype=torch.float64)
    with torch.no_grad():
        logits, precise = head.precise_radius(z)
        _, closed = head.radius(z)
    top = logits.argmax(1)
    nearest = torch.full((40,), math.inf, dtype=torch.float64)
    for restart in range(10):
        torch.manual_seed(restart)
        delta = (0.01 * torch.randn_like(z)).requires_grad_()
        optimizer = torch.optim.Adam([delta], lr=0.03)
        for _ in range(150):
            out = head(z + delta)
            runner_up = out.masked_fill(torch.nn.functional.one_hot(top, 4).bool(), -math.inf).max(1).values
            gap = out.gather(1, top[:, None])[:, 0] - runner_up
            loss = (delta.norm(dim=1) + 10 * torch.relu(gap + 1e-3)).sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            flipped = head(z + delta).argmax(1) != top
            nearest = torch.where(flipped, torch.minimum(nearest, delta.norm(dim=1)), nearest)
    assert torch.isfinite(nearest).sum() >= 30
    assert (precise <= nearest).all(), "a point inside the precise radius changed class"
    assert (precise > closed).float().mean() >= 0.8 and (precise / closed).median() > 1.1


def test_a_lipconvnet_mlp_heads_precise_certificates_pass_the_certificate_check(tiny_fashion_root: Path) -> None:
    settings = RunSettings(
        data=DataConfig("fashion_mnist", root=str(tiny_fashion_root), subset=200, val=0),
        model=ModelConfig("lipconvnet", {"depth": 5, "init_channels": 4, "head": "mlp", "hidden": 32, "eval_terms": 6}),
        train=TrainConfig(epochs=2, batch_size=50, optimizer="adam", lr=1e-2),
        eval=EvalConfig(examples=15, items=[CertifiedEval(eps=[0.05])]),
    )
    data = load_data(settings.data)
    model = fit(settings, build_method("lipschitz", {"cr": 0.1}), data)
    eps = [0.05, 0.15]
    config = EvalConfig(examples=15, items=[
        CertifiedEval(eps=eps), CertifiedEval(eps=eps, certificate="precise"),
        CertificateCheckEval(eps=eps, n_iter=10, attacks=["fmn"], certificate="precise")])
    result = run_evaluation(model, data, config)
    table = result.tables["certificate_check"]
    assert (table["correct"] & (table["certified_radius"] > 0)).sum() >= 5, "train longer for a meaningful check"
    assert result.metrics["certificate_violations"] == 0
    with torch.no_grad():
        x = data.test_x[:15].float() / 255
        closed, precise = model.certify(x)[1], model.certify(x, precise=True)[1]
    assert (precise.clamp_min(0) / closed.clamp_min(1e-12)).median() > 1.05
    for e in eps:
        closed_acc = result.metrics[f"certified_eps{e:.4g}_acc"]
        precise_acc = result.metrics[f"certified_precise_eps{e:.4g}_acc"]
        assert closed_acc <= precise_acc <= result.metrics[f"certificate_check_eps{e:.4g}_acc"]
