"""The Optuna define-by-run search space, read from the methods' declarations.

`method` is categorical over the study's method labels; then the chosen method's
hyperparameters are suggested under the names `{method}/{param}`, which Ray unflattens into
`config[method][param]`: a `TrialConfig` in Tune's form (`trainables.trial`). Fixed values are
returned as constants so every trial's config holds all of its method's hyperparameters, and
`registered_method` names the registered method of a label that is a variant (`sgr_pgd` of `sgr`).
"""

from __future__ import annotations

from typing import Any

import optuna

from trainables.core.params import Param
from trainables.trial import METHOD_KEY, REGISTERED_KEY


def space_key(label: str, name: str) -> str:
    """Optuna's name of a hyperparameter: Ray unflattens `label/name` into config[label][name]."""
    return f"{label}/{name}"


def suggest(trial: optuna.Trial, name: str, param: Param) -> Any:
    if param.choices is not None:
        return trial.suggest_categorical(name, list(param.choices))
    if param.kind == "int":
        return trial.suggest_int(name, int(param.low), int(param.high), log=param.log)
    return trial.suggest_float(name, param.low, param.high, log=param.log)


class MethodSearchSpace:
    """A define-by-run function over `methods` (method name -> resolved hyperparameters); a
    class rather than a closure so the searcher can be pickled into Tune's experiment state."""

    def __init__(self, methods: dict[str, dict[str, Param]], registered: dict[str, str]) -> None:
        self.methods = methods
        self.registered = registered

    def __call__(self, trial: optuna.Trial) -> dict[str, Any]:
        names = list(self.methods)
        constants: dict[str, Any] = {}
        if len(names) > 1:
            method = trial.suggest_categorical(METHOD_KEY, names)
        else:
            method = constants[METHOD_KEY] = names[0]
        if self.registered[method] != method:
            constants[REGISTERED_KEY] = self.registered[method]
        for pname, param in self.methods[method].items():
            key = space_key(method, pname)
            if param.searchable:
                suggest(trial, key, param)
            else:
                constants[key] = param.default
        return constants


def first_points(methods: dict[str, dict[str, Param]], first: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`search.first` entries as Optuna parameter dicts, named as the space names them."""
    points = []
    for entry in first:
        method = entry[METHOD_KEY]
        point = {METHOD_KEY: method} if len(methods) > 1 else {}
        point.update({space_key(method, k): v for k, v in entry.items()
                      if k != METHOD_KEY and methods[method][k].searchable})
        points.append(point)
    return points


def describe_space(methods: dict[str, dict[str, Param]]) -> str:
    """The space as text, for --dry-run."""
    lines = [f"method: one of {list(methods)}"]
    for name, params in methods.items():
        lines.append(f"  {name}:" + ("" if params else " (no hyperparameters)"))
        lines += [f"    {pname}: {param.describe()}" for pname, param in params.items()]
    return "\n".join(lines)
