"""The strong evaluation: AutoAttack (adv-lib + the project's Square), minimum-norm radii,
attack-failure indicators and certificate checks, on small models trained here."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from analysis.curves import radius_curve
from trainables.core.attacks import pgd_l2
from trainables.core.data import DataBundle, DataConfig, load_data
from trainables.core.evaluation import (
    AttackEval,
    AutoAttackEval,
    CertificateCheckEval,
    CertifiedEval,
    EvalConfig,
    MinNormEval,
    run_evaluation,
    verified,
)
from trainables.core.evaluation.config import evaluation_order
from trainables.core.methods import build_method
from trainables.core.models import ModelConfig
from trainables.core.registry import ConfigError
from trainables.core.schema import parse
from trainables.core.settings import RunSettings, TrainConfig
from trainables.core.square import square
from trainables.core.train import fit

EPS = [0.5, 1.0, 2.0]
EXAMPLES = 60


def train(root: Path, model: ModelConfig, method: str = "clean", epochs: int = 4) -> tuple[nn.Module, DataBundle]:
    settings = RunSettings(
        data=DataConfig("fashion_mnist", root=str(root), subset=600, val=0),
        model=model,
        train=TrainConfig(epochs=epochs, batch_size=50, optimizer="adam", lr=1e-2 if method == "lipschitz" else 3e-3),
        eval=EvalConfig(examples=20, items=[AttackEval(eps=[1.0], steps=2)]),
    )
    data = load_data(settings.data)
    return fit(settings, build_method(method, {}), data).eval(), data


@pytest.fixture(scope="module")
def cnn(tiny_fashion_root: Path) -> tuple[nn.Module, DataBundle]:
    return train(tiny_fashion_root, ModelConfig("cw_cnn", {"widths": [8, 8, 16, 16, 32, 32]}))


@pytest.fixture(scope="module")
def lipschitz_net(tiny_fashion_root: Path) -> tuple[nn.Module, DataBundle]:
    return train(tiny_fashion_root, ModelConfig("kwl", {"layer": "orthogon", "gamma": 1.0, "head": "plain"}),
                 method="lipschitz", epochs=3)


class Quantized(nn.Module):
    """A gradient-masking defence: inputs rounded to 2 levels, so the input gradient is zero."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(torch.round(x))


def test_autoattack_is_never_above_pgd_and_min_norm_radii_agree_with_it(cnn: tuple) -> None:
    model, data = cnn
    config = EvalConfig(examples=EXAMPLES, items=[
        AttackEval(attack="pgd_l2", eps=EPS, steps=10),
        AutoAttackEval(norm="l2", eps=EPS, version="fast"),
        MinNormEval(norm="l2", eps=EPS, steps=50),
    ])
    result = run_evaluation(model, data, config)
    metrics, table = result.metrics, result.tables["min_norm_l2"]
    for eps in EPS:
        pgd, strong = metrics[f"pgd_l2_eps{eps:.4g}_acc"], metrics[f"autoattack_l2_eps{eps:.4g}_acc"]
        assert strong <= pgd, (eps, strong, pgd)
        from_radii = float((table["correct"] & (table["radius"] > eps)).double().mean())
        assert metrics[f"min_norm_l2_eps{eps:.4g}_acc"] == pytest.approx(from_radii)
        assert abs(metrics[f"min_norm_l2_eps{eps:.4g}_acc"] - strong) <= 0.1
    assert metrics["clean_acc"] > 0.5 and metrics["autoattack_l2_eps2_acc"] < metrics["clean_acc"]
    assert metrics["min_norm_l2_unbroken"] == 0 and not any("min_norm_l2" in w for w in result.warnings)
    correct = table["correct"]
    assert (table["radius"][~correct] == 0).all() and (table["radius"][correct] > 0).all()
    assert metrics["min_norm_l2_median"] == pytest.approx(float(table["radius"][correct].median()))
    order = evaluation_order(data.test_y, config.sample_seed)[:EXAMPLES]
    assert torch.equal(table["label"], data.test_y[order])  # one row per example, in the evaluation's order
    broken_by = metrics["autoattack_l2_eps0.5_apgd_ce_broken"] + metrics["autoattack_l2_eps0.5_apgd_t_broken"]
    assert broken_by == round((metrics["clean_acc"] - metrics["autoattack_l2_eps0.5_acc"]) * EXAMPLES)
    curve = radius_curve(pd.DataFrame({"radius": table["radius"].numpy()}), [0.0, *EPS])
    assert curve[1:] == pytest.approx([metrics[f"min_norm_l2_eps{eps:.4g}_acc"] for eps in EPS])


def test_only_verified_adversarial_examples_count() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))
        model[1].bias.zero_()
    x = torch.full((1, 1, 2, 2), 0.5)
    y = torch.tensor([0])
    flipped = x.clone()
    flipped[0, 0, 0, 0] = -0.1  # misclassified, but outside [0, 1]
    assert not verified(model, x, flipped, y, "l2", 1.0)
    ok = x.clone()
    ok[0, 0, 0, 0] = 0.0  # misclassified? z0 = 0 = z1: argmax 0, still correct
    assert not verified(model, x, ok, y, "l2", 1.0)
    shifted = x.clone()
    shifted[0, 0, 0, 0] = 0.0
    shifted[0, 0, 0, 1] = 1.0  # still correct: the model reads pixel 0 only
    assert not verified(model, x, shifted, y, "l2", 1.0)
    model[1].bias.data = torch.tensor([-0.4, 0.0])
    shifted = x.clone()
    shifted[0, 0, 0, 0] = 0.1  # z0 = -0.3 < z1 = -0.1: misclassified, distance 0.4
    assert verified(model, x, shifted, y, "l2", 0.4)
    assert not verified(model, x, shifted, y, "l2", 0.39)
    assert not verified(model, x, torch.full_like(x, math.nan), y, "l2", 10.0)


def test_a_gradient_masked_model_trips_the_indicators_and_square_breaks_it(cnn: tuple) -> None:
    model, data = cnn
    masked = Quantized(model).eval()
    config = EvalConfig(examples=40, items=[
        AttackEval(attack="pgd_linf", eps=[0.3], steps=10),
        AutoAttackEval(norm="linf", eps=[0.3], version="standard", n_iter=20, square_queries=400),
    ])
    result = run_evaluation(masked, data, config)
    metrics = result.metrics
    assert metrics["autoattack_linf_eps0.3_square_broken"] > 0
    assert metrics["autoattack_linf_eps0.3_acc"] < metrics["pgd_linf_eps0.3_acc"]
    text = " ".join(result.warnings)
    assert "zero or non-finite input gradients" in text
    assert "gradient masking" in text
    assert "overstates robustness" in text
    clean = run_evaluation(model, data, EvalConfig(examples=40, items=[AttackEval(attack="pgd_linf", eps=[0.3])]))
    assert not any("gradients" in w for w in clean.warnings)


def test_a_certified_model_shows_no_violation_and_an_understated_bound_does(lipschitz_net: tuple) -> None:
    model, data = lipschitz_net
    eps = [0.05, 0.1]
    config = EvalConfig(examples=30, items=[CertifiedEval(eps=eps), CertificateCheckEval(eps=eps, n_iter=30)])
    sound = run_evaluation(model, data, config)
    table = sound.tables["certificate_check"]
    certified = table["correct"] & (table["certified_radius"] > 0)
    assert certified.sum() >= 5, "train longer: too few certified points for a meaningful check"
    assert sound.metrics["certificate_violations"] == 0 and not sound.warnings
    assert 0 < sound.metrics["certificate_tightness"] <= 1
    for e in eps:  # certified accuracy is a lower bound of what the attacks leave
        assert sound.metrics[f"certified_eps{e:.4g}_acc"] <= sound.metrics[f"certificate_check_eps{e:.4g}_acc"]
    true_bound = model.lipschitz_bound()
    model.lipschitz_bound = lambda fresh=True: true_bound / 20  # deliberately understated
    # radii 20x too large: one short attack finds examples inside them, no need for the full check
    quick = EvalConfig(examples=30, items=[CertifiedEval(eps=eps),
                                           CertificateCheckEval(eps=eps, n_iter=10, attacks=["ddn"])])
    try:
        broken = run_evaluation(model, data, quick)
    finally:
        del model.lipschitz_bound
    assert broken.metrics["certificate_violations"] > 0
    assert any("inside the certified radius" in w for w in broken.warnings)
    violations = broken.tables["certificate_check"]
    inside = violations["violation"]
    assert (violations["smallest_adversarial"][inside] < violations["certified_radius"][inside]).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_square_stays_in_its_ball_spends_at_most_its_queries_and_is_seeded(cnn: tuple, norm: str) -> None:
    model, data = cnn
    x, y = data.test_x[:20].float() / 255, data.test_y[:20]
    eps = 0.1 if norm == "linf" else 2.5
    calls = []

    def counted(inputs: torch.Tensor) -> torch.Tensor:
        calls.append(len(inputs))
        return model(inputs)

    adversarial = square(counted, x, y, eps=eps, norm=norm, n_queries=300, seed=3)
    assert sum(calls) <= 300 * len(x) and len(calls) <= 300
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    distance = (adversarial - x).flatten(1).norm(p=math.inf if norm == "linf" else 2, dim=1)
    assert (distance <= eps * (1 + 1e-5)).all()
    with torch.no_grad():
        broke = (model(adversarial).argmax(1) != y) & (model(x).argmax(1) == y)
    assert broke.any()
    assert torch.equal(adversarial, square(model, x, y, eps=eps, norm=norm, n_queries=300, seed=3))


def test_pgd_best_iterate_and_restarts_never_break_fewer_points(cnn: tuple) -> None:
    model, data = cnn
    x, y = data.test_x[:EXAMPLES].float() / 255, data.test_y[:EXAMPLES]

    def broken(**options: object) -> torch.Tensor:
        adversarial = pgd_l2(model, x, y, eps=1.0, steps=10, step_size=0.5, **options)
        return verified(model, x, adversarial, y, "l2", 1.0)

    final_only = broken()
    best = broken(best_iterate=True)
    assert (best | final_only).sum() == best.sum()  # whatever the final iterate breaks, best-iterate breaks
    assert broken(best_iterate=True, restarts=3, loss="dlr").sum() >= best.sum() - 2
    restarted = broken(restarts=3)  # the first restart is the single run: what it breaks stays broken
    assert not (final_only & ~restarted).any() and restarted.sum() >= final_only.sum()


@pytest.mark.parametrize(("item", "message"), [
    ({"kind": "autoattack", "norm": "l3", "eps": [1.0]}, r"items\[0\]\.norm: 'l3' is not allowed; allowed: l2, linf"),
    ({"kind": "autoattack", "version": "rand", "eps": [1.0]}, r"items\[0\]\.version: 'rand' is not allowed"),
    ({"kind": "autoattack", "eps": [0.0]}, r"items\[0\]\.eps: needs one or more positive finite"),
    ({"kind": "autoattack", "eps": [math.inf]}, r"items\[0\]\.eps\[0\]: expected a finite number, got inf"),
    ({"kind": "min_norm", "eps": [math.nan]}, r"items\[0\]\.eps\[0\]: expected a finite number, got nan"),
    ({"kind": "min_norm", "attacks": ["cw"], "eps": [1.0]}, r"attacks\[0\]: unknown minimum-norm attack 'cw'; allowed"),
    ({"kind": "min_norm", "norm": "linf", "attacks": ["ddn"], "eps": [0.1]}, r"ddn does not minimize the linf"),
])
def test_bad_strong_evaluation_keys_are_named(item: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(EvalConfig, {"items": [item]}, "final_eval")


def test_a_certificate_check_needs_a_bounded_model(tiny_fashion_root: Path) -> None:
    with pytest.raises(ConfigError, match="model.name: certified accuracy needs a Lipschitz-bounded model"):
        parse(RunSettings, {
            "data": {"dataset": "fashion_mnist", "root": str(tiny_fashion_root)},
            "model": {"name": "cw_cnn"},
            "train": {"epochs": 1},
            "final_eval": {"items": [{"kind": "certificate_check"}]},
        }, "")


def test_the_strong_attacks_refuse_a_one_output_regression() -> None:
    with pytest.raises(ConfigError, match=r"final_eval.items\[0\].kind: autoattack attacks a classifier"):
        parse(RunSettings, {
            "data": {"dataset": "square_wave"},
            "model": {"name": "toy"},
            "train": {"epochs": 1},
            "eval": {"items": [{"kind": "certified"}]},
            "final_eval": {"items": [{"kind": "autoattack", "eps": [0.1]}]},
        }, "")
