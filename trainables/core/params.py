"""Hyperparameter declarations: a method declares each one once, and both the spec validator and
the Optuna search space read that declaration."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from trainables.core.registry import ConfigError

Kind = Literal["float", "int", "bool", "categorical"]


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, default, and default search range (low/high or choices).

    A Param without a range is fixed at its default unless a spec gives a range or a value.
    `allowed` lists the values a categorical Param accepts when it is not searched by default.
    """

    kind: Kind
    default: Any
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    allowed: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    doc: str = ""

    @property
    def searchable(self) -> bool:
        return self.choices is not None or (self.low is not None and self.high is not None)

    def check_value(self, value: Any, key: str) -> Any:
        """Return `value` coerced to this kind, or raise ConfigError naming `key`. A Param whose
        default is None also takes None (meaning: the method's own rule, e.g. a step size)."""
        if value is None and self.default is None:
            return None
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{key}: expected true or false, got {value!r}")
            return value
        if self.kind == "categorical":
            allowed = self.allowed or self.choices
            if allowed is not None and value not in allowed:
                raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {list(allowed)}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            article = "an" if self.kind == "int" else "a"
            raise ConfigError(f"{key}: expected {article} {self.kind}, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite {self.kind}, got {value}")
        if self.kind == "int" and value != int(value):
            raise ConfigError(f"{key}: expected an int, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise ConfigError(f"{key}: must be >= {self.minimum}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise ConfigError(f"{key}: must be <= {self.maximum}, got {value!r}")
        return int(value) if self.kind == "int" else float(value)

    def with_range(self, spec: dict[str, Any], key: str) -> Param:
        """This Param with the search range a spec gives as {low, high, log}."""
        unknown = set(spec) - {"low", "high", "log"}
        if unknown:
            raise ConfigError(f"{key}: unknown range key(s) {sorted(unknown)}; allowed: low, high, log")
        if self.kind not in ("float", "int"):
            raise ConfigError(f"{key}: a {self.kind} hyperparameter takes a value or a list, not a range")
        if "low" not in spec or "high" not in spec:
            raise ConfigError(f"{key}: a range needs both low and high")
        low = self.check_value(spec["low"], f"{key}.low")
        high = self.check_value(spec["high"], f"{key}.high")
        log = spec.get("log", self.log)
        if not isinstance(log, bool):
            raise ConfigError(f"{key}.log: expected true or false, got {log!r}")
        if not low < high:
            raise ConfigError(f"{key}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise ConfigError(f"{key}: a log range needs low > 0, got low={low}")
        return replace(self, low=low, high=high, log=log, choices=None)

    def with_choices(self, values: list[Any], key: str) -> Param:
        """This Param searched over an explicit list of values."""
        if not values:
            raise ConfigError(f"{key}: an empty list of choices")
        checked = tuple(self.check_value(v, f"{key}[{i}]") for i, v in enumerate(values))
        return replace(self, choices=checked, low=None, high=None)

    def fixed(self, value: Any, key: str) -> Param:
        """This Param fixed at `value` (no search)."""
        return replace(self, default=self.check_value(value, key), low=None, high=None, choices=None)

    def override(self, spec: Any, key: str) -> Param:
        """Apply a spec's entry for this hyperparameter: a range dict, a list of choices, or a value."""
        if isinstance(spec, dict):
            return self.with_range(spec, key)
        if isinstance(spec, list):
            return self.with_choices(spec, key)
        return self.fixed(spec, key)

    @classmethod
    def inferred(cls, spec: Any, key: str) -> Param:
        """A Param for a setting that declares none (a model option, a train key), read from
        how the spec gives it: a range {low, high, log} (int if both ends are), a list of
        choices, or a fixed value."""
        if isinstance(spec, dict):
            ends = [spec.get("low"), spec.get("high")]
            kind = "int" if all(isinstance(e, int) and not isinstance(e, bool) for e in ends) else "float"
            return cls(kind, ends[0]).with_range(spec, key)
        if isinstance(spec, list):
            return cls("categorical", spec[0] if spec else None).with_choices(spec, key)
        kind = {bool: "bool", int: "int", float: "float"}.get(type(spec), "categorical")
        return cls(kind, spec)

    def describe(self) -> str:
        if self.choices is not None:
            return f"one of {list(self.choices)}"
        if self.searchable:
            scale = " log" if self.log else ""
            return f"{self.kind} in [{self.low}, {self.high}]{scale}"
        if self.default is None:
            return f"fixed None ({self.doc})"
        return f"fixed {self.default!r}"
