"""Typed configuration read from plain mappings (YAML), with errors that name the key.

Every section of a run or study spec is a dataclass; `parse` checks unknown keys, required keys,
types and Literal choices, and calls the dataclass's own `check(path)` for cross-field rules.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import reprlib
import types
import typing
from typing import Any, ClassVar, TypeVar

import yaml

from trainables.core.registry import ConfigError, Registry

T = TypeVar("T")
INTERNAL = "internal"  # field metadata: set by the program, not a key of the YAML


def parse(cls: type[T], data: Any, path: str) -> T:
    """Build dataclass `cls` from mapping `data`, located at `path` in the spec."""
    custom = getattr(cls, "from_mapping", None)
    if custom is not None:
        return custom(data, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'spec'}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and not f.metadata.get(INTERNAL)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key; allowed: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        key = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = coerce(hints[name], data[name], key)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}: required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check(path)
    return obj


SHORT = reprlib.Repr()
SHORT.maxstring, SHORT.maxother, SHORT.maxlist, SHORT.maxdict, SHORT.maxlevel = 60, 60, 6, 6, 2


def short(value: Any) -> str:
    """A value as an error message shows it: truncated, so a huge (or alias-expanded) value
    cannot flood the terminal or exhaust memory."""
    return SHORT.repr(value)


def clip(name: str) -> str:
    """A key or an argument as an error message names it: as written when short and printable."""
    return name if name.isprintable() and len(name) <= 80 else short(name)


MAX_NODES = 100_000  # a spec is a few hundred values; an alias bomb expands to billions


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (YAML forbids it; PyYAML
    would keep the last) and a document whose aliases expand past MAX_NODES values."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                name = clip(key) if isinstance(key, str) else short(key)
                raise ConfigError(f"{name}: given twice (lines {seen[key]} and {line}); give each key once")
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def expanded_size(node: yaml.Node, budget: list[int]) -> None:
    """Count the values of `node` with its aliases expanded, stopping once past the budget."""
    budget[0] -= 1
    if budget[0] < 0:
        return
    children = node.value if isinstance(node, yaml.SequenceNode) else (
        [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
    for child in children:
        expanded_size(child, budget)
        if budget[0] < 0:
            return


def load_yaml(text: str | bytes, source: str) -> Any:
    """A YAML document from a spec file (bytes, which must be UTF-8) or a --set value, through
    SpecLoader; a malformed, duplicated or alias-bombed document raises ConfigError naming `source`."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ConfigError(f"{source}: not UTF-8 (byte {err.start} is {text[err.start:err.start + 1]!r}); "
                              f"save the file as UTF-8") from err
    try:
        loader = SpecLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                return None
            budget = [MAX_NODES]
            expanded_size(node, budget)
            if budget[0] < 0:
                raise ConfigError(f"{source}: expands to more than {MAX_NODES} values (YAML aliases?); "
                                  f"a spec is a few hundred")
            return loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {str(err).splitlines()[0][:200]}") from err


def describe_type(tp: Any) -> str:
    """How an error message names what a type annotation allows."""
    if typing.get_origin(tp) is typing.Literal:
        return ", ".join(map(str, typing.get_args(tp)))
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", list: "a list"}
    return names.get(typing.get_origin(tp) or tp, "a mapping")


def coerce(tp: Any, value: Any, key: str) -> Any:
    """`value` checked against type annotation `tp`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        if len(errors) == 1:
            raise ConfigError(errors[0])
        raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {', '.join(map(describe_type, options))}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not allowed; allowed: {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return {k: coerce(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) or hasattr(tp, "from_mapping"):
        return parse(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {short(value)}")
        if not -2 ** 63 <= value < 2 ** 63:
            raise ConfigError(f"{key}: {short(value)} does not fit in 64 bits")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {short(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {value}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config dataclass (what `parse` reads back)."""
    to_mapping = getattr(obj, "to_mapping", None)
    if to_mapping is not None:
        return to_mapping()
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if not f.metadata.get(INTERNAL)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def require(condition: bool, key: str, message: str) -> None:
    """Raise ConfigError `key: message` unless `condition` holds."""
    if not condition:
        raise ConfigError(f"{key}: {message}")


SEED_LIMIT = 2 ** 32  # what numpy's and torch's generators take


def require_seed(seed: int, key: str) -> None:
    """Every seed a spec sets (training, search, evaluation, confirmation) seeds numpy or torch."""
    require(0 <= seed < SEED_LIMIT, key, f"must be in 0 .. 2^32 - 1, got {seed}")


def named_mapping(data: Any, path: str, key: str, registry: Registry) -> tuple[str, dict[str, Any]]:
    """`{name: pgd_l2, epsilon: 0.5}` -> ("pgd_l2", {"epsilon": 0.5}): an entry that names a
    registered model, method or evaluation by `field`, with its options beside the name."""
    if not isinstance(data, dict) or key not in data:
        raise ConfigError(f"{path}: expected a mapping with a `{key}`; {registry.kind}s: {registry.names()}")
    return data[key], {k: v for k, v in data.items() if k != key}


@dataclasses.dataclass
class NamedEntry:
    """A spec section that names a registered entry and sets its options beside the name
    (`model: {name: cw_cnn, widths: mnist}`, `method: {name: pgd_l2, epsilon: 0.5}`); a subclass
    names its registry and checks the options against the entry's declaration."""

    REGISTRY: ClassVar[Registry]
    name: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_mapping(cls, data: Any, path: str) -> Any:
        name, options = named_mapping(data, path, "name", cls.REGISTRY)
        return cls(name, cls.checked_options(name, options, path))

    @classmethod
    def checked_options(cls, name: str, options: dict[str, Any], path: str) -> dict[str, Any]:
        """`options` of entry `name` at `path`, checked (raises ConfigError naming the key)."""
        raise NotImplementedError

    def to_mapping(self) -> dict[str, Any]:
        return {"name": self.name, **self.options}


def apply_overrides(spec: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """`spec` with each `dotted.key=value` applied; values are read as YAML (`1e-3`, `[1, 2]`)."""
    result = copy.deepcopy(spec)
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {clip(assignment)}: expected key=value, e.g. train.epochs=3")
        if not all(key.split(".")):
            raise ConfigError(f"--set {clip(key)}: an empty part in the dotted key; expected e.g. train.epochs=3")
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {clip(key)}: {clip(part)} is not a mapping")
            node = child
        node[parts[-1]] = load_yaml(raw, f"--set {key}")
    return result
