"""The base of an evaluation item: what `evaluate` asks of every registered kind."""

from __future__ import annotations

import torch

from trainables.core.evaluation.base import Batch


class Item:
    """An `eval.items` entry. `correct` returns, per metric, which examples of the batch are
    still correct (one bool each: a column of the evaluation's per-example records, summed and
    divided by the number of examples at the end) or a sum over the batch (a count, a maximum,
    a mean's numerator); `derived` computes metrics from the totals and the per-example tables."""

    needs_bound = False  # measures a certificate: the model must be Lipschitz-bounded
    needs_classes = False  # attacks class decisions of images in [0, 1] (not a one-output regression)
    uses_gradients = False  # a gradient attack: the evaluation then checks for dead input gradients

    def check(self, path: str) -> None:
        """Cross-field rules of the item's keys (types are checked by the schema)."""

    def metric_names(self) -> list[str]:
        raise NotImplementedError

    def correct(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def derived(self, metrics: dict[str, float], tables: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
        return {}

    def balls(self) -> dict[str, tuple[str, float]]:
        """Per robust accuracy it measures in a norm ball: (norm, eps). Every verified adversarial
        example within that ball makes the example count as broken there, whichever attack found
        it, so another evaluation's verified examples bound this accuracy from above."""
        return {}

    def maxima(self) -> set[str]:
        """Metrics combined across batches by their maximum rather than a sum."""
        return set()

    def counts(self) -> set[str]:
        """Metrics reported as raw counts rather than shares of the examples."""
        return set()
