"""PGD: raises the loss, stays in the ball and in [0, 1], and starts where the reference does."""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn
from torch.nn import functional as F

from study.evaluate import reference_evaluation
from trainables.core.attacks import per_example_norm, pgd_l2, project_l2


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))


def test_pgd_l2_raises_the_loss_and_stays_in_the_ball() -> None:
    model = small_model()
    x = torch.rand(64, 3, 4, 4)
    y = torch.randint(0, 5, (64,))
    for eps in (0.1, 0.5, 2.0):
        x_adv = pgd_l2(model, x, y, eps=eps, steps=10, step_size=2.5 * eps / 10)
        assert float(per_example_norm(x_adv - x).max()) <= eps + 1e-5
        assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
        with torch.no_grad():
            before = F.cross_entropy(model(x), y, reduction="none")
            after = F.cross_entropy(model(x_adv), y, reduction="none")
        assert bool((after >= before - 1e-6).all()) and float((after - before).mean()) > 0


def test_more_budget_never_lowers_the_attack_loss() -> None:
    model = small_model()
    x, y = torch.rand(32, 3, 4, 4), torch.randint(0, 5, (32,))
    losses = [float(F.cross_entropy(model(pgd_l2(model, x, y, eps=e, steps=20, step_size=e / 8)), y))
              for e in (0.25, 0.5, 1.0)]
    assert losses[0] < losses[1] < losses[2]


def test_unclipped_pgd_still_stays_in_the_ball() -> None:
    model = small_model()
    x, y = torch.rand(16, 3, 4, 4), torch.randint(0, 5, (16,))
    x_adv = pgd_l2(model, x, y, eps=3.0, steps=5, step_size=1.0, clip=False)
    torch.testing.assert_close(per_example_norm(x_adv - x).flatten(), torch.full((16,), 3.0))


def test_projection_leaves_short_perturbations_alone() -> None:
    delta = torch.tensor([[3.0, 4.0], [0.3, 0.4]])
    torch.testing.assert_close(project_l2(delta, 1.0), torch.tensor([[0.6, 0.8], [0.3, 0.4]]))


def test_the_reference_evaluations_linf_pgd_starts_uniformly_in_the_box() -> None:
    """kernel_reg reg.PGDLinf (rand=True, what compute_adv.py evaluates with): delta starts at
    eps * (2 u - 1), u uniform in [0, 1)^d; the l2 PGD there starts at delta = 0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.rand(5, 3, 2, 2, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    model = model.double()
    linf, l2 = reversed(reference_evaluation(None, steps=1, batch_size=5).items)
    assert (linf.attack, linf.random_start, l2.attack, l2.random_start) == ("pgd_linf", True, "pgd_l2", False)
    tiny = replace(linf, step_size=1e-12, best_iterate=False)  # one negligible step: the start itself
    started = tiny.run(model, x, y, 0.1, None, torch.Generator().manual_seed(7))
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert torch.allclose(started, (x + 0.1 * (2 * u - 1)).clamp(0, 1), atol=1e-10)
    again = tiny.run(model, x, y, 0.1, None, torch.Generator().manual_seed(7))
    assert torch.equal(started, again), "the evaluation's generator decides the start"
    from_zero = replace(l2, step_size=1e-12, best_iterate=False).run(model, x, y, 0.5, None, torch.Generator())
    assert torch.allclose(from_zero, x, atol=1e-10)
