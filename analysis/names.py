"""How a hyperparameter and its value are shown in run names, progress tables and front tables
(no dependencies: the trial contract names runs with it too)."""

from __future__ import annotations

SHORT_NAMES = {"epsilon": "eps", "lambda": "lam", "weight_decay": "wd", "lambda_sn": "lam_sn"}


def short_name(hyperparameter: str) -> str:
    """`epsilon` -> `eps`, `model.gamma` -> `gamma`: how run names and front tables show it."""
    name = hyperparameter.removeprefix("model.").removeprefix("train.")
    return SHORT_NAMES.get(name, name)


def short_value(value: object) -> str:
    """0.96817 -> `0.968`; other values as they print."""
    if isinstance(value, float):
        return f"{value:.3g}"
    try:
        return f"{float(value):.3g}" if value not in ("True", "False", None) else str(value)
    except (TypeError, ValueError):
        return str(value)
