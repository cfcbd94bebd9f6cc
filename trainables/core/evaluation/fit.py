"""`{kind: fit}`: the mean squared error of a one-output regression (the square_wave toy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from trainables.core.evaluation.base import EVALUATIONS, Batch
from trainables.core.evaluation.item import Item


@EVALUATIONS.register("fit")
@dataclass
class FitEval(Item):
    """The mean squared error of the model's one output against its target."""

    kind: Literal["fit"] = "fit"

    def metric_names(self) -> list[str]:
        return ["fit_mse"]

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {"fit_mse": (batch.logits[:, 0] - batch.y).square().sum()}
