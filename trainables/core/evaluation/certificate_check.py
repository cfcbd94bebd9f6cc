"""`{kind: certificate_check}`: attacks that must fail against a Lipschitz certificate."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from trainables.core.evaluation.base import EVALUATIONS, Batch, distances, metric_name, seeded, verified
from trainables.core.evaluation.certified import LBDN_EPS, certified_radii
from trainables.core.evaluation.item import Item
from trainables.core.evaluation.library import apgd_ce, apgd_t
from trainables.core.evaluation.min_norm import MinNormEval, smallest_adversarial

# a certificate and an attack's distance are both float32 computations: within this relative
# margin an adversarial example on the certified radius is rounding, not a broken certificate
RELATIVE_TOLERANCE = 1e-5


@EVALUATIONS.register("certificate_check")
@dataclass
class CertificateCheckEval(Item):
    """Soundness and tightness of a Lipschitz model's certificates (l2). On every certified point
    (correct, radius r > 0): APGD-CE and APGD-T with eps = r itself, then the minimum-norm
    attacks (`attacks`); an adversarial example closer than r (1 - 1e-5) is a violation, never
    silently counted: `certificate_violations` (a count, also a warning). `certificate_tightness`
    = median certified radius / median smallest adversarial distance over correctly classified
    points (1: exact; Lipschitz networks are typically 0.3-0.7). Per eps, the empirical
    accuracy these attacks leave, `certificate_check_eps{eps}_acc`: an upper bound on robust
    accuracy that the certified accuracy at eps must not exceed. `certificate`: which one is
    checked (see the certified item)."""

    kind: Literal["certificate_check"] = "certificate_check"
    eps: list[float] = field(default_factory=lambda: list(LBDN_EPS))
    attacks: list[str] = field(default_factory=lambda: ["fmn", "ddn", "fab"])
    n_iter: int = 100
    seed: int = 0
    certificate: Literal["closed_form", "precise"] = "closed_form"
    needs_classes = True
    needs_bound = True

    def check(self, path: str) -> None:
        MinNormEval(norm="l2", attacks=self.attacks, eps=self.eps).check(path)  # eps and the attacks

    def metric_names(self) -> list[str]:
        return ([metric_name("certificate_check", eps) for eps in self.eps]
                + ["certificate_violations", "certificate_tightness"])

    def counts(self) -> set[str]:
        return {"certificate_violations"}

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        ok, certified = certified_radii(batch.model, batch.x, batch.y, self.certificate)
        certified = certified.detach().double().clamp_min(0)
        index = ok.nonzero()[:, 0]
        smallest = torch.where(ok, math.inf, 0.0).double()
        violations = torch.zeros(len(ok), dtype=torch.bool, device=ok.device)
        if len(index):
            smallest[index] = smallest_adversarial(batch, self.attacks, "l2", self.n_iter, self.seed, index)["radius"]
            at_radius = index[certified[index] > 0]
            for attack in (apgd_ce, apgd_t):
                if not len(at_radius):
                    break
                x, y, r = batch.x[at_radius], batch.y[at_radius], certified[at_radius].float()
                with seeded(batch.attack_seed(self.seed), x.device), torch.enable_grad():
                    x_adv = attack(batch.model, x, y, eps=r, norm="l2", n_iter=self.n_iter)
                hit = verified(batch.model, x, x_adv, y, "l2", r)
                smallest[at_radius] = torch.minimum(smallest[at_radius],
                                                    torch.where(hit, distances(x, x_adv, "l2"), math.inf))
            violations = ok & (smallest < certified * (1 - RELATIVE_TOLERANCE))
        batch.record("certificate_check", label=batch.y, correct=ok, certified_radius=certified,
                     smallest_adversarial=smallest, violation=violations)
        if violations.any():
            batch.warn(f"certificate_check: {int(violations.sum())} adversarial example(s) inside the certified "
                       "radius: the bound or the certificate is wrong")
        counts = {metric_name("certificate_check", eps): ok & (smallest > eps) for eps in self.eps}
        counts["certificate_violations"] = violations.sum()
        return counts

    def derived(self, metrics: dict[str, float], tables: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        table = tables["certificate_check"]
        correct = table["correct"]
        certified, smallest = table["certified_radius"][correct], table["smallest_adversarial"][correct]
        if not len(certified) or not torch.isfinite(smallest.median()) or smallest.median() <= 0:
            return {"certificate_tightness": math.nan}
        return {"certificate_tightness": float(certified.median() / smallest.median())}
