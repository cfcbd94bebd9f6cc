"""A study spec: one YAML file naming the data, the model, the methods and their search ranges.

`load_spec` validates everything before anything starts; every error names the key and what is
allowed. The run sections (data, model, train, eval) are the core's own config types.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from trainables.core.data import DATASET_INFO
from trainables.core.evaluation import EvalConfig
from trainables.core.methods import METHODS, method_params
from trainables.core.models import MODELS, ModelConfig, check_model, model_options
from trainables.core.models.lipschitz import LIPSCHITZ_MODELS
from trainables.core.params import Param
from trainables.core.presets import apply_preset
from trainables.core.registry import ConfigError
from trainables.core.schema import apply_overrides, load_yaml, parse, require, require_seed, to_dict
from trainables.core.settings import RunSettings

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


SETTING_SECTIONS = ("model", "train")
TRAIN_SEARCHABLE = ("lr", "momentum", "batch_size", "optimizer")


def section_overrides(overrides: dict[str, Any], section: str, key: str) -> list[tuple[str, Any]]:
    """Pop a method entry's `model:` or `train:` mapping: settings this method's trials change."""
    values = overrides.pop(section, None) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{key}.{section}: expected a mapping of {section} settings, got {values!r}")
    if section == "train":
        for option in values:
            require(option in TRAIN_SEARCHABLE, f"{key}.train.{option}",
                    f"not settable per method; allowed: {', '.join(TRAIN_SEARCHABLE)}")
    return list(values.items())


@dataclass
class MethodSpace:
    """The methods a study compares, each with its hyperparameters resolved against the
    method's declaration: a spec entry fixes a value (`lambda: 0.1`), gives a range
    (`{low, high, log}`) or a list of choices; an omitted one keeps the declared default range.
    A name may combine a method with constraints (`pgd_l2+sn_projection`): the union of both.
    An entry is a label; `method:` inside it names the registered method when the label does
    not (`sgr_pgd: {method: sgr, source: pgd}`), so one method can enter a study as variants.
    `model:` and `train:` mappings set or search model options and train settings for that
    entry's trials (`model: {layer: aol, gamma: {low: 1, high: 100, log: true}}`); they enter
    the space as `model.gamma`, `train.lr`."""

    methods: dict[str, dict[str, Param]]
    registered: dict[str, str]
    raw: dict[str, Any]

    @classmethod
    def from_mapping(cls, data: Any, path: str) -> MethodSpace:
        if not isinstance(data, dict) or not data:
            raise ConfigError(f"{path}: expected a mapping of one or more methods; methods: {METHODS.names()}")
        methods, registered = {}, {}
        for label, overrides in data.items():
            key = f"{path}.{label}"
            require(isinstance(label, str) and bool(LABEL_PATTERN.match(label)), key,
                    "a method label needs letters, digits, '_', '.', '-', '+'")
            overrides = overrides or {}
            if not isinstance(overrides, dict):
                raise ConfigError(f"{key}: expected a mapping of hyperparameters, got {overrides!r}")
            overrides = dict(overrides)
            name = overrides.pop("method", label)
            require(isinstance(name, str), f"{key}.method", f"expected a method name; methods: {METHODS.names()}")
            declared = method_params(name, f"{key}.method" if name != label else key)
            settings = {f"{section}.{option}": value
                        for section in SETTING_SECTIONS for option, value in section_overrides(overrides, section, key)}
            unknown = sorted(set(overrides) - set(declared))
            if unknown:
                raise ConfigError(
                    f"{key}.{unknown[0]}: unknown hyperparameter of {name}; allowed: "
                    f"{', '.join(declared) or '(none)'}, or model / train settings"
                )
            methods[label] = {
                p: param.override(overrides[p], f"{key}.{p}") if p in overrides else param
                for p, param in declared.items()
            }
            methods[label].update({p: Param.inferred(v, f"{key}.{p}") for p, v in settings.items()})
            registered[label] = name
        return cls(methods, registered, data)

    def to_mapping(self) -> dict[str, Any]:
        return self.raw


@dataclass
class Objective:
    metric: str
    mode: Literal["max", "min"] = "max"


@dataclass
class SchedulerConfig:
    """ASHA on one metric (epochs are its time unit), or `fifo` to run every trial to the end."""

    kind: Literal["asha", "fifo"] = "asha"
    metric: str = "robust_acc"
    mode: Literal["max", "min"] = "max"
    grace_period: int = 1
    reduction_factor: int = 3

    def rungs(self, epochs: int) -> list[int]:
        """The epochs where ASHA compares trials: grace_period * reduction_factor^k below
        `epochs`, with the rung count Ray's ASHA computes (none under FIFO)."""
        if self.kind == "fifo":
            return []
        count = int(math.log(epochs / self.grace_period) / math.log(self.reduction_factor) + 1)
        return [self.grace_period * self.reduction_factor ** k for k in range(count)]

    def check(self, path: str) -> None:
        require(self.grace_period >= 1, f"{path}.grace_period", f"must be >= 1, got {self.grace_period}")
        require(self.reduction_factor >= 2, f"{path}.reduction_factor",
                f"must be >= 2, got {self.reduction_factor}")


@dataclass
class SearchConfig:
    """`first`: configurations Optuna evaluates before it samples, e.g. `[{method: clean,
    weight_decay: 0}, {method: pgd_l2, epsilon: 1.0}]` (unnamed hyperparameters are sampled)."""

    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    first: list[dict[str, Any]] = field(default_factory=list)

    def check(self, path: str) -> None:
        require(self.num_samples >= 1, f"{path}.num_samples", f"must be >= 1, got {self.num_samples}")
        require(self.max_concurrent >= 1, f"{path}.max_concurrent",
                f"must be >= 1, got {self.max_concurrent}")
        require(self.num_samples <= 10 ** 6, f"{path}.num_samples", f"must be <= 10^6, got {self.num_samples}")
        require_seed(self.seed, f"{path}.seed")


@dataclass
class ResourcesConfig:
    """Per trial. A fractional `gpu` packs several trials on one GPU (0.25: four). On a cluster
    whose autoscaler adds nodes (`autoscaling: true`; Ray does not tell a program whether one
    runs), a request no node holds yet is asked of the autoscaler and waited for `wait_s`."""

    cpu: float = 1.0
    gpu: float = 0.0
    autoscaling: bool = False
    wait_s: float = 600.0

    def check(self, path: str) -> None:
        require(self.cpu > 0, f"{path}.cpu", f"must be > 0, got {self.cpu}")
        require(0 <= self.gpu and (self.gpu <= 1 or self.gpu == int(self.gpu)), f"{path}.gpu",
                f"must be a fraction in [0, 1] or a whole number of GPUs, got {self.gpu}")
        require(0 < self.wait_s <= 86400, f"{path}.wait_s", f"must be in (0, 86400] seconds, got {self.wait_s}")

    def fits(self, cpus: float, gpus: float) -> bool:
        """Whether a node of `cpus` CPUs and `gpus` GPUs holds one trial (on a node without GPUs
        the GPU share is dropped, except where an autoscaler can add a node that has them)."""
        return self.cpu <= cpus and (self.gpu <= gpus or (gpus == 0 and not self.autoscaling))

    def require_within(self, cpus: float, gpus: float, holder: str) -> None:
        """Refuse a per-trial request larger than `holder` (the largest node, or this machine):
        a trial runs on one node, and Tune would wait for a larger one forever. `gpus` 0: none
        there, so the GPU share is dropped (with a notice) rather than refused."""
        require(self.cpu <= cpus, "resources.cpu",
                f"{self.cpu} per trial, but {holder} has {cpus:g} CPUs; allowed: 0 < cpu <= {cpus:g}")
        require(gpus == 0 or self.gpu <= gpus, "resources.gpu",
                f"{self.gpu} per trial, but {holder} has {gpus:g} GPUs; allowed: 0 <= gpu <= {gpus:g}")


@dataclass
class FaultsConfig:
    """A trial that raises (a NaN loss included) or loses its node is retried this many times
    from its last checkpoint before it is marked failed; the study goes on either way."""

    max_failures: int = 2

    def check(self, path: str) -> None:
        require(self.max_failures >= 0, f"{path}.max_failures", f"must be >= 0, got {self.max_failures}")


@dataclass
class TrackingConfig:
    """MLflow experiment (default: the study's name); the URI comes from --tracking-uri.
    `wait_s`: how long a stage's end waits for an unreachable tracking store to take the study's
    kept writes before the study stops with exit code 3 (its results stay in Tune's storage and
    `--resume` re-logs them)."""

    experiment: str | None = None
    wait_s: float = 600.0

    def check(self, path: str) -> None:
        require(self.wait_s > 0, f"{path}.wait_s", f"must be > 0 seconds, got {self.wait_s}")


@dataclass
class RaceBudget:
    """What a racing confirm stage may spend after its first round: new seed trials, and
    seconds of wall time (an action is planned only where its expected seconds, shared by the
    study's concurrent slots, fit what is left). None: no limit."""

    trials: int | None = None
    seconds: float | None = None

    def check(self, path: str) -> None:
        require(self.trials is None or self.trials > 0, f"{path}.trials", f"must be > 0, got {self.trials}")
        require(self.seconds is None or self.seconds > 0, f"{path}.seconds", f"must be > 0, got {self.seconds}")


@dataclass
class ConfirmConfig:
    """After the search, retrain the front's configurations once per seed on the full budget:
    at most `top` of them (the front's points that add the most hypervolume; with `per_method`,
    each method's best configuration first). `epochs`, `subset` (data.subset) and `final_eval`
    replace the search's settings for these runs; omitted, the search's stay. `examples`: how
    many examples its evaluation judges them on (default: that evaluation's own).

    Racing (`max_seeds` above the number of seeds, or `max_examples` above `examples`): after each
    round the paired verdicts (`confidence`, equivalence margin `delta`) decide which places on
    the front are settled; while some are not and `budget` remains, the next round evaluates
    the trials on more examples (from their checkpoints) or trains more seeds, whichever shrinks
    the open intervals most per second. Defaults: no more seeds or examples (a fixed stage)."""

    seeds: list[int]
    top: int = 4
    per_method: bool = False
    epochs: int | None = None
    subset: int | None = None
    final_eval: EvalConfig | None = None
    examples: int | None = None
    max_seeds: int | None = None
    max_examples: int | None = None
    budget: RaceBudget = field(default_factory=RaceBudget)
    delta: float = 0.01
    confidence: float = 0.95

    def check(self, path: str) -> None:
        require(bool(self.seeds), f"{path}.seeds", "needs at least one seed, e.g. [0, 1, 2]")
        repeated = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        require(not repeated, f"{path}.seeds", f"seed {repeated[0] if repeated else ''} is repeated; "
                "allowed: distinct integers in 0 .. 2^32 - 1")
        for i, seed in enumerate(self.seeds):
            require_seed(seed, f"{path}.seeds[{i}]")
        require(self.top >= 1, f"{path}.top", f"must be >= 1, got {self.top}")
        require(self.epochs is None or self.epochs >= 1, f"{path}.epochs", f"must be >= 1, got {self.epochs}")
        require(self.subset is None or self.subset >= 1, f"{path}.subset",
                f"must be a positive number of examples, got {self.subset}")
        require(self.examples is None or self.examples >= 1, f"{path}.examples",
                f"must be a positive number of examples, got {self.examples}")
        require(self.max_seeds is None or self.max_seeds >= len(self.seeds), f"{path}.max_seeds",
                f"must be at least the {len(self.seeds)} seed(s) of confirm.seeds, got {self.max_seeds}")
        require(self.delta >= 0, f"{path}.delta", f"must be >= 0, got {self.delta}")
        require(0.5 < self.confidence < 1, f"{path}.confidence", f"must be in (0.5, 1), got {self.confidence}")
        require(self.max_seeds is None or self.max_seeds <= len(self.seeds) or len(self.seeds) >= 2,
                f"{path}.seeds", "racing needs at least 2 seeds to start from (a seed variance)")

    @property
    def seed_limit(self) -> int:
        return self.max_seeds or len(self.seeds)


@dataclass
class StudySpec(RunSettings):
    name: str = ""
    methods: MethodSpace | None = None
    objectives: list[Objective] = field(
        default_factory=lambda: [Objective("clean_acc"), Objective("robust_acc")]
    )
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    confirm: ConfirmConfig | None = None

    def check(self, path: str) -> None:
        super().check(path)
        require(bool(NAME_PATTERN.match(self.name)), "name",
                f"{self.name!r}: needs letters, digits, '_', '.', '-' (a folder and experiment name)")
        require(self.methods is not None, "methods", f"required; methods: {METHODS.names()}")
        for label, params in self.methods.methods.items():
            self.check_model_overrides(label, params)
            self.check_model_values(label, params)
            self.train.check_method(self.methods.registered[label], f"methods.{label}")
        measured = self.eval.metric_names() + ["robust_acc", "train_loss", "train_time_s"]  # every epoch
        require(bool(self.objectives), "objectives", "needs at least one objective")
        for i, objective in enumerate(self.objectives):
            require(objective.metric in measured, f"objectives[{i}].metric",
                    f"{objective.metric!r} is not measured; allowed: {', '.join(measured)}")
        for i, point in enumerate(self.search.first):
            key = f"search.first[{i}]"
            require(point.get("method") in self.methods.methods, f"{key}.method",
                    f"{point.get('method')!r} is not among the study's methods: {', '.join(self.methods.methods)}")
            declared = self.methods.methods[point["method"]]
            for name, value in point.items():
                if name != "method":
                    require(name in declared, f"{key}.{name}",
                            f"unknown hyperparameter of {point['method']}; allowed: {', '.join(declared)}")
                    param = declared[name]
                    value = param.check_value(value, f"{key}.{name}")
                    require(param.searchable or value == param.default, f"{key}.{name}",
                            f"fixed at {param.default!r} in this study; search.first sets searched ones")
                    require(param.choices is None or value in param.choices, f"{key}.{name}",
                            f"{value!r} is not among the searched choices; allowed: {list(param.choices or [])}")
                    require(param.low is None or param.low <= value <= param.high, f"{key}.{name}",
                            f"{value!r} is outside the searched range; allowed: {param.low} .. {param.high}")
        require(self.scheduler.metric in measured, "scheduler.metric",
                f"{self.scheduler.metric!r} is not measured; allowed: {', '.join(measured)}")
        if self.scheduler.kind == "asha":
            require(self.scheduler.grace_period <= self.train.epochs, "scheduler.grace_period",
                    f"{self.scheduler.grace_period} exceeds train.epochs ({self.train.epochs})")
            rungs = self.scheduler.rungs(self.train.epochs)
            skipped = [r for r in rungs if not self.eval.due(r, self.train.epochs, rungs)]
            require(not skipped, "eval.every", f"ASHA compares trials at epochs {rungs}, and every "
                    f"{self.eval.every} skips {skipped}; allowed: rungs, or an interval that divides every rung")

        if self.confirm is not None:
            self.check_confirm(measured)

    def check_confirm(self, measured: list[str]) -> None:
        """A confirm stage confirms a clean-vs-robust front, so the search must define one; its
        final_eval must suit the data and every model of the study."""
        maximized = {o.metric for o in self.objectives if o.mode == "max"}
        robust = [m for m in measured if m.endswith("_acc") and m != "clean_acc"]
        require("clean_acc" in maximized and bool(maximized & set(robust)), "confirm",
                "confirms a clean-vs-robust front, so objectives must maximize clean_acc and a robust "
                f"accuracy; allowed robust metrics: {', '.join(robust)}")
        if self.confirm.subset is not None:
            self.data.check_size("confirm", self.confirm.subset)
        settings = self.confirm_settings()
        judged = settings.final_eval or settings.eval
        limit = self.confirm.max_examples
        require(limit is None or judged.examples is None or limit >= judged.examples, "confirm.max_examples",
                f"must be at least confirm.examples ({judged.examples}), got {limit}")
        sizes = DATASET_INFO[self.data.dataset].sizes
        held = self.data.val if judged.split == "val" else sizes[1] if sizes else None
        require(limit is None or held is None or limit <= held, "confirm.max_examples",
                f"{limit}, but the {judged.split} split holds {held} examples; allowed: at most {held}")
        if self.confirm.final_eval is not None:
            settings.final_eval.check_classifier(self.data.dataset, "confirm.final_eval")
            if settings.final_eval.needs_bound:
                models = {self.model.name} | {params["model.name"].default for params in self.methods.methods.values()
                                              if "model.name" in params}
                for model in sorted(models):
                    settings.check_model(model, "confirm.final_eval")

    def confirm_settings(self) -> RunSettings:
        """What every confirmation run shares: the search's settings with confirm's overrides, and
        no rungs (no scheduler compares confirmation runs: `every: rungs` evaluates at the end)."""
        settings, confirm = self.settings(), self.confirm
        final_eval = confirm.final_eval or settings.final_eval
        examples = {"examples": confirm.examples} if confirm.examples is not None else {}
        return replace(
            settings,
            rungs=[],
            train=replace(settings.train, epochs=confirm.epochs or settings.train.epochs),
            data=replace(settings.data, subset=confirm.subset or settings.data.subset),
            eval=replace(settings.eval, **examples) if final_eval is None else settings.eval,
            final_eval=replace(final_eval, **examples) if final_eval is not None else None,
        )

    def check_model_overrides(self, label: str, params: dict[str, Param]) -> None:
        """A method entry's `model:` keys must be options of its model (the study's, or the one
        its `model.name` names, whose options then start from its own defaults)."""
        model = self.model.name
        if "model.name" in params:
            require(not params["model.name"].searchable, f"methods.{label}.model.name", "takes one model, not a search")
            model = params["model.name"].default
            MODELS.get(model, f"methods.{label}.model.name")
            self.check_model(model, f"methods.{label}.model.name")
        options = model_options(model)
        for name in params:
            option = name.removeprefix("model.")
            if name.startswith("model.") and option != "name":
                require(option in options, f"methods.{label}.{name}",
                        f"not an option of model {model}; allowed: {', '.join(options) or '(none)'}")

    def check_model_values(self, label: str, params: dict[str, Param]) -> None:
        """Build each model a method entry's trials can get (on the meta device: no memory, no
        arithmetic) so a bad option value (an unknown activation, a depth the model lacks) is
        refused now, not inside a trial: the entry's fixed values, then each searched one at
        its choices or the ends of its range."""
        model = {name.removeprefix("model."): param for name, param in params.items() if name.startswith("model.")}
        name = model.pop("name").default if "name" in model else self.model.name
        base = {} if name != self.model.name else dict(self.model.options)
        fixed = {**base, **{option: param.default for option, param in model.items()}}
        candidates = [fixed]
        for option, param in model.items():
            if param.searchable:
                values = param.choices if param.choices is not None else (param.low, param.high)
                candidates += [{**fixed, option: value} for value in values]
        for options in candidates:
            try:
                check_model(ModelConfig(name, options), DATASET_INFO[self.data.dataset])
            except ConfigError as err:  # name the entry where the entry set the option
                message = str(err)
                option = message.split(":")[0].removeprefix("model.")
                raise ConfigError(f"methods.{label}.{message}" if option in model else message) from err

    def warnings(self) -> list[str]:
        """Valid settings known to fail, one line each: a 1-Lipschitz network (any layer family
        but `plain`) under Adam on a constant schedule at lr > 0.001 sits at chance (an AOL KWL
        at lr 0.01: loss flat at 2.671, accuracy 0.10)."""
        if self.train.optimizer != "adam" or self.train.schedule.kind != "constant":
            return []
        found = []
        for label, params in self.methods.methods.items():
            name = params["model.name"].default if "model.name" in params else self.model.name
            if name not in LIPSCHITZ_MODELS:
                continue
            options = model_options(name)
            layer = (params["model.layer"].default if "model.layer" in params else
                     self.model.options.get("layer", options["layer"].default if "layer" in options else None))
            lr = params["train.lr"] if "train.lr" in params else None
            highest = (lr.high if lr.searchable and lr.high is not None else lr.default) if lr else self.train.lr
            if layer != "plain" and highest > 1e-3:
                family = f"{name} ({layer})" if layer else name
                found.append(f"warning: methods.{label}: a 1-Lipschitz {family} network under Adam at lr up to "
                             f"{highest:g} on a constant schedule can stay at chance; use LBDN's warm-up "
                             "(train.schedule: {kind: piecewise_linear, ...}, as search_spaces/lipschitz.yaml) or "
                             "lr <= 0.001")
        return found

    def searched(self) -> dict[str, list[str]]:
        """Per method label, the hyperparameters the search varies (not those fixed)."""
        return {label: [name for name, param in params.items() if param.searchable]
                for label, params in self.methods.methods.items()}

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

    def settings(self) -> RunSettings:
        """The part shared by every trial (what the trainable receives)."""
        return RunSettings(data=self.data, model=self.model, train=self.train, eval=self.eval,
                           final_eval=self.final_eval, rungs=self.scheduler.rungs(self.train.epochs))

    def to_yaml(self) -> str:
        plain = to_dict(self)
        return yaml.safe_dump({"name": plain.pop("name"), **plain}, sort_keys=False)


def load_spec(path: Path, overrides: list[str] | None = None) -> StudySpec:
    """Read, override (`key=value`) and validate a study spec; raises ConfigError."""
    if not path.is_file():
        raise ConfigError(f"spec: no such file {path}")
    raw = load_yaml(path.read_bytes(), f"spec {path}")
    if not isinstance(raw, dict):
        raise ConfigError(f"spec: {path} must hold a mapping of sections")
    raw = apply_overrides(apply_preset(raw), overrides or [])
    raw.setdefault("name", path.stem)
    return parse(StudySpec, raw, "")
