"""The Optuna define-by-run space read from the method declarations, sampled by real Optuna."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from ray.tune.utils.util import unflatten_dict

from study.space import MethodSearchSpace
from study.spec import load_spec

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def sample(space: MethodSearchSpace, n: int) -> list[dict]:
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=optuna.samplers.TPESampler(seed=0))
    configs = []
    for _ in range(n):
        trial = study.ask()
        constants = space(trial)
        configs.append(unflatten_dict({**trial.params, **constants}))
        study.tell(trial, [0.5, 0.5])
    return configs


def test_every_config_holds_its_method_and_all_of_its_hyperparameters_in_range() -> None:
    space = load_spec(QUICKSTART).methods
    methods = space.methods
    configs = sample(MethodSearchSpace(methods, space.registered), 40)
    assert {c["method"] for c in configs} == {"clean", "pgd_l2", "loss_gradl2"}
    for config in configs:
        name = config["method"]
        assert set(config) == {"method", name}
        assert set(config[name]) == set(methods[name])
        for pname, param in methods[name].items():
            value = config[name][pname]
            if param.searchable:
                assert param.low <= value <= param.high
            else:
                assert value == param.default


def test_log_ranges_are_sampled_on_a_log_scale() -> None:
    methods = load_spec(QUICKSTART, ["methods={pgd_l2: {epsilon: {low: 0.001, high: 1000.0, log: true}}}"]).methods
    values = [c["pgd_l2"]["epsilon"] for c in sample(MethodSearchSpace(methods.methods, methods.registered), 60)]
    below_one = sum(v < 1.0 for v in values)
    assert 15 <= below_one <= 45, f"{below_one} of 60 below the log midpoint"
    assert min(math.log10(v) for v in values) < -1.5


def test_a_single_method_is_a_constant_not_a_choice() -> None:
    methods = load_spec(QUICKSTART, ["methods={loss_gradl2: {lambda: 0.3}}"]).methods
    configs = sample(MethodSearchSpace(methods.methods, methods.registered), 3)
    assert configs == [{"method": "loss_gradl2", "loss_gradl2": {"lambda": 0.3}}] * 3


def test_variants_of_one_method_carry_their_registered_method() -> None:
    methods = load_spec(QUICKSTART, [
        "methods={sgr_pgd: {method: sgr, source: pgd}, sgr_sign: {method: sgr, source: sign}, gn: {}}"]).methods
    assert methods.registered == {"sgr_pgd": "sgr", "sgr_sign": "sgr", "gn": "gn"}
    configs = sample(MethodSearchSpace(methods.methods, methods.registered), 30)
    assert {c["method"] for c in configs} == {"sgr_pgd", "sgr_sign", "gn"}
    for config in configs:
        label = config["method"]
        if label == "gn":
            assert "registered_method" not in config
        else:
            assert config["registered_method"] == "sgr"
            assert config[label]["source"] == label.removeprefix("sgr_")
            assert set(config[label]) == set(methods.methods[label])
