"""Figures a trial leaves with its final checkpoint (logged to its MLflow run by the study)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from trainables.core.data import DataBundle


def is_one_dimensional_fit(data: DataBundle) -> bool:
    """A regression of one output on one input (the square_wave toy)."""
    return data.info.shape == (1, 1, 1) and data.info.num_classes == 1


@torch.no_grad()
def one_dimensional_fit(model: nn.Module, data: DataBundle, title: str, path: Path) -> None:
    """The model's output over the input range, with the training points and the test targets,
    as in the LBDN toy figure."""
    from matplotlib.figure import Figure  # here: only toy studies draw, and every trial's process starts 0.4 s sooner

    model.eval()
    low, high = float(data.test_x.min()), float(data.test_x.max())
    grid = torch.linspace(low, high, 1000, device=data.test_x.device).view(-1, 1, 1, 1)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(data.test_x.flatten().cpu(), data.test_y.cpu(), color="black", lw=1, label="target")
    ax.scatter(data.train_x.flatten().cpu(), data.train_y.cpu(), s=6, color="grey", alpha=0.5, label="training points")
    ax.plot(grid.flatten().cpu(), model(grid)[:, 0].cpu(), color="tab:blue", lw=1.5, label="model")
    ax.set_xlabel("x")
    ax.set_ylabel("f(x)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
