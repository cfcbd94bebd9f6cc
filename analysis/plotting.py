"""How every analysis figure ends: a light grid, the legend, saved at one resolution, closed."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def finish(fig: Figure, ax: Axes, path: Path, legend_size: int = 8) -> None:
    """Grid and legend on `ax`, then `fig` written to `path` (PNG, 120 dpi) and closed."""
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
