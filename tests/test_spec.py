"""Study specs: the shipped ones load; bad input exits with one message naming the key, before Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray
import yaml

from study.launch import main as launch
from study.spec import SchedulerConfig, load_spec
from trainables.core.methods import METHODS
from trainables.core.registry import ConfigError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "search_spaces" / "quickstart.yaml"


def write_spec(tmp_path: Path, **changes: object) -> Path:
    spec = yaml.safe_load(QUICKSTART.read_text())
    for key, value in changes.items():
        node = spec
        *parents, last = key.split("__")
        for part in parents:
            node = node[part]
        if value is None:
            del node[last]
        else:
            node[last] = value
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_load(path: Path) -> None:
    spec = load_spec(path)
    assert spec.methods.methods and spec.name


FAMILY_SPECS = {"kernel_reg": ["kernel_reg.yaml", "kernel_reg_fashion.yaml"], "sgr": ["sgr.yaml", "sgr_cifar10.yaml"],
                "lbdn": ["lipschitz.yaml", "lipschitz_cifar10.yaml"]}


@pytest.mark.parametrize(("family", "spec"), [(f, s) for f, specs in FAMILY_SPECS.items() for s in specs])
def test_a_family_spec_names_every_registered_method_of_its_family(family: str, spec: str) -> None:
    """A family's spec searches its whole family: a method registered with that family and
    missing from the spec fails here (by itself, or as a part of a `method+constraint` entry)."""
    registered = load_spec(ROOT / "search_spaces" / spec).methods.registered
    named = {part for name in registered.values() for part in name.split("+")}
    family_methods = {name for name in METHODS if family in METHODS.get(name).families}
    assert family_methods and family_methods <= named, f"{spec} lacks {sorted(family_methods - named)}"


def test_every_registered_method_belongs_to_a_family_with_specs() -> None:
    assert all(set(METHODS.get(name).families) & set(FAMILY_SPECS) for name in METHODS)


def test_quickstart_resolves_declared_and_overridden_ranges() -> None:
    methods = load_spec(QUICKSTART).methods.methods
    assert set(methods) == {"clean", "pgd_l2", "loss_gradl2"}
    eps = methods["pgd_l2"]["epsilon"]
    assert (eps.low, eps.high, eps.log) == (0.25, 3.0, True)
    assert methods["clean"]["weight_decay"].searchable
    assert not methods["pgd_l2"]["steps"].searchable and methods["pgd_l2"]["steps"].default == 5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optimiser": "adam"}, r"optimiser: unknown key; allowed: data, model, train, eval, final_eval, name"),
        ({"train__optimizer": "lbfgs"}, r"train.optimizer: 'lbfgs' is not allowed; allowed: sgd, adam"),
        ({"methods__trades": {}}, r"methods.trades: unknown method 'trades'; allowed: adv_perturbation_penalty, clean"),
        ({"model__name": "vit"}, r"model.name: unknown model 'vit'; allowed: cw_cnn, dnn, kwl, lipconvnet, mlp"),
        ({"data__dataset": "svhn"}, r"data.dataset: unknown data set 'svhn'; allowed: cifar10, cifar100"),
        ({"methods__pgd_l2": {"epsilon": {"low": 2.0, "high": 1.0}}},
         r"methods.pgd_l2.epsilon: low \(2.0\) must be below high \(1.0\)"),
        ({"methods__pgd_l2": {"epsilon": {"low": 0.0, "high": 1.0, "log": True}}},
         r"methods.pgd_l2.epsilon: a log range needs low > 0"),
        ({"methods__pgd_l2": {"epsilon": {"low": 0.1}}}, r"methods.pgd_l2.epsilon: a range needs both low and high"),
        ({"methods__pgd_l2": {"eps": 0.5}}, r"methods.pgd_l2.eps: unknown hyperparameter of pgd_l2; allowed: epsilon"),
        ({"methods__sn_projection": {}}, r"methods.sn_projection: sn_projection is a constraint; put a method first"),
        ({"methods__pgd_l2+clean": {}}, r"methods.pgd_l2\+clean: clean is a method; one method combines with"),
        ({"methods__clean+sn_projection": {"sn_mode": "exact"}},
         r"methods.clean\+sn_projection.sn_mode: 'exact' is not allowed; allowed: \['reshaped', 'operator'\]"),
        ({"methods__pgd_l2": {"steps": "five"}}, r"methods.pgd_l2.steps: expected an int, got 'five'"),
        ({"objectives": [{"metric": "pgd_linf_acc"}]}, r"objectives\[0\].metric: 'pgd_linf_acc' is not measured"),
        ({"eval__every": 2}, r"eval.every: ASHA compares trials at epochs \[1, 2\], and every 2 skips \[1\]"),
        ({"scheduler__grace_period": 9}, r"scheduler.grace_period: 9 exceeds train.epochs \(3\)"),
        ({"eval__items": [{"kind": "attack", "eps": [-1.0]}]}, r"eval.items\[0\].eps: needs one or more positive"),
        ({"eval__items": [{"kind": "lrc"}]}, r"eval.items\[0\].kind: unknown evaluation kind 'lrc'; allowed: attack"),
        ({"eval__items": [{"kind": "noise", "noise": "pink"}]},
         r"eval.items\[0\].noise: 'pink' is not allowed; allowed: uniform, lrc"),
        ({"eval__items": [{"kind": "attack", "attack": "fgm", "eps": [0.5], "steps": 10}]},
         r"eval.items\[0\].steps: fgm takes one step of length eps"),
        ({"eval__items": [{"kind": "deepfool"}]}, r"eval.items: needs an item that measures robust accuracy"),
        ({"methods__sgr_x": {"method": "sgrr"}}, r"methods.sgr_x.method: unknown method 'sgrr'; allowed:"),
        ({"methods__sgr_x": {"method": "sgr", "epsilon": 0.1}},
         r"methods.sgr_x.epsilon: unknown hyperparameter of sgr; allowed: lambda, beta, source, eps"),
        ({"methods__sgr_x": {"method": "sgr", "source": "svd"}},
         r"methods.sgr_x.source: 'svd' is not allowed; allowed: \['grad', 'sign', 'fgsm', 'pgd'\]"),
        ({"methods__a/b": {"method": "sgr"}}, r"methods.a/b: a method label needs letters"),
        ({"methods__sgr": {"beta": {"low": 0.1, "high": 2.0}}}, r"methods.sgr.beta.high: must be <= 1.0, got 2.0"),
        ({"search__first": [{"method": "gn"}]}, r"search.first\[0\].method: 'gn' is not among the study's methods"),
        ({"search__first": [{"method": "pgd_l2", "lambda": 1}]},
         r"search.first\[0\].lambda: unknown hyperparameter of pgd_l2; allowed: epsilon"),
        ({"search__first": [{"method": "pgd_l2", "epsilon": -1}]}, r"search.first\[0\].epsilon: must be >= 0.0"),
        ({"search__first": [{"method": "pgd_l2", "steps": 3}]},
         r"search.first\[0\].steps: fixed at 5 in this study; search.first sets searched ones"),
        ({"resources__gpu": 1.5}, r"resources.gpu: must be a fraction in \[0, 1\]"),
        ({"methods": None}, r"methods: required"),
        ({"train__epochs": None}, r"train.epochs: required key is missing"),
    ],
)
def test_bad_specs_name_the_key_and_what_is_allowed(tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_spec(write_spec(tmp_path, **changes))


def test_set_overrides_are_applied_and_validated() -> None:
    spec = load_spec(QUICKSTART, ["train.epochs=7", "methods.pgd_l2.epsilon=0.5"])
    assert spec.train.epochs == 7
    assert spec.methods.methods["pgd_l2"]["epsilon"].default == 0.5
    assert not spec.methods.methods["pgd_l2"]["epsilon"].searchable
    with pytest.raises(ConfigError, match="--set train.epochs: expected key=value"):
        load_spec(QUICKSTART, ["train.epochs"])


def test_launch_refuses_a_bad_spec_before_ray_starts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = launch([str(write_spec(tmp_path, methods__trades={})), "--storage", str(tmp_path / "runs")])
    assert code == 2
    assert "error: methods.trades: unknown method 'trades'" in capsys.readouterr().err
    assert not ray.is_initialized() and not (tmp_path / "runs").exists()


def test_dry_run_prints_the_resolved_spec_and_space(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = launch([str(QUICKSTART), "--dry-run", "--num-samples", "3", "--storage", str(tmp_path / "runs")])
    out = capsys.readouterr().out
    assert code == 0 and not ray.is_initialized() and not (tmp_path / "runs").exists()
    resolved = yaml.safe_load(out.split("# search space")[0])
    assert resolved["search"]["num_samples"] == 3 and resolved["name"] == "quickstart"
    assert "epsilon: float in [0.25, 3.0] log" in out and "steps: fixed 5" in out


@pytest.mark.parametrize(("epochs", "grace", "factor"),
                         [(4, 1, 2), (8, 1, 2), (20, 5, 2), (100, 1, 3), (10, 3, 3), (60, 2, 4)])
def test_the_rungs_are_where_rays_asha_compares_trials(epochs: int, grace: int, factor: int) -> None:
    from ray.tune.schedulers import ASHAScheduler

    asha = ASHAScheduler(time_attr="training_iteration", metric="m", mode="max", max_t=epochs,
                         grace_period=grace, reduction_factor=factor)
    milestones = sorted(milestone for milestone, _ in asha._brackets[0]._rungs)  # Ray's own, private
    assert SchedulerConfig(grace_period=grace, reduction_factor=factor).rungs(epochs) == milestones
    assert SchedulerConfig(kind="fifo").rungs(epochs) == []


def test_a_study_passes_its_rungs_to_the_trials_and_no_rungs_key_exists(tmp_path: Path) -> None:
    spec = load_spec(write_spec(tmp_path, train__epochs=8, scheduler__grace_period=1))
    assert spec.eval.every == "rungs" and spec.settings().rungs == [1, 2, 4, 8]
    assert spec.confirm_settings().rungs == []
    with pytest.raises(ConfigError, match="rungs: unknown key"):
        load_spec(write_spec(tmp_path, rungs=[1]))
