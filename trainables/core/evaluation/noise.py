"""`{kind: noise}`: accuracy under random noise, worst of k draws (the SGR paper's LRC attack)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import torch

from trainables.core.attacks import uniform_noise
from trainables.core.covariance import LrcNoise
from trainables.core.evaluation.base import EVALUATIONS, Batch, check_eps, metric_name
from trainables.core.evaluation.item import Item
from trainables.core.schema import require


@functools.lru_cache(maxsize=8)
def lrc_sampler(shape: tuple[int, ...], zeta: float, device: torch.device) -> LrcNoise:
    return LrcNoise(shape, zeta, device)


@EVALUATIONS.register("noise")
@dataclass
class NoiseEval(Item):
    """Accuracy under random noise, worst of `k` draws per example: `uniform` (linf box of
    radius eps) or `lrc` (long-range correlated Gaussian noise with decay length zeta, each draw
    scaled to l2 norm eps; the SGR paper's attack uses k = 100)."""

    kind: Literal["noise"] = "noise"
    noise: Literal["uniform", "lrc"] = "lrc"
    eps: list[float] = field(default_factory=lambda: [1.0])
    zeta: list[float] = field(default_factory=lambda: [4.0])
    k: int = 100

    def check(self, path: str) -> None:
        check_eps(self.eps, path)
        require(self.k >= 1, f"{path}.k", f"must be >= 1, got {self.k}")
        if self.noise == "lrc":
            require(bool(self.zeta) and all(z > 0 for z in self.zeta), f"{path}.zeta",
                    f"needs one or more positive decay lengths, got {self.zeta}")

    def settings(self) -> list[tuple[str, float | None]]:
        """(metric prefix, zeta) for each noise this item draws."""
        if self.noise == "uniform":
            return [("uniform", None)]
        return [(f"lrc_zeta{zeta:.4g}", zeta) for zeta in self.zeta]

    def metric_names(self) -> list[str]:
        return [metric_name(prefix, eps) for prefix, _ in self.settings() for eps in self.eps]

    def draw(self, x: torch.Tensor, eps: float, zeta: float | None, generator: torch.Generator) -> torch.Tensor:
        if zeta is None:
            return uniform_noise(x, eps, generator)
        return lrc_sampler(tuple(x.shape[1:]), zeta, x.device).sample_scaled(len(x), eps, generator).to(x.dtype)

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        counts = {}
        for prefix, zeta in self.settings():
            for eps in self.eps:
                ok = batch.clean_ok.clone()
                for _ in range(self.k):
                    noisy = (batch.x + self.draw(batch.x, eps, zeta, batch.generator)).clamp(0.0, 1.0)
                    ok &= batch.model(noisy).argmax(1) == batch.y
                counts[metric_name(prefix, eps)] = ok
        return counts
