"""`square_wave`: the LBDN toy regression (Wang & Manchester 2023, Fig. 3). x ~ U[-2, 2]
(300 training points, seeded), y = 1 if x <= -1 or 0 < x <= 1 else 0; 200 test points on
linspace(-2, 2). A one-output regression: inputs are float 1 x 1 x 1 "images" in [-2, 2],
targets floats; a prediction counts as correct within 0.5 of its target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from trainables.core.data import DatasetInfo, Splits, register_dataset

SQUARE_WAVE_INFO = DatasetInfo("square_wave", 1, (1, 1, 1), (0.0,), (1.0,), (300, 200))


def square_wave(x: torch.Tensor) -> torch.Tensor:
    return ((x <= -1) | ((x > 0) & (x <= 1))).float()


@register_dataset("square_wave", SQUARE_WAVE_INFO)
def load_square_wave(root: Path) -> Splits:
    """Generated, not read: `root` is unused."""
    train_x = torch.from_numpy(np.random.RandomState(0).uniform(-2, 2, 300)).float()
    test_x = torch.linspace(-2, 2, 200)
    return Splits(SQUARE_WAVE_INFO, train_x.view(-1, 1, 1, 1), square_wave(train_x),
                  test_x.view(-1, 1, 1, 1), square_wave(test_x))
