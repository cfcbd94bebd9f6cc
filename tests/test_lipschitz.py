"""Lipschitz-bounded models: the whole network's Jacobian never exceeds its bound, certificates
are sound against an attack inside the certified radius, and studies search model options."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from study.launch import main as launch
from study.spec import load_spec
from tests.helpers import ROOT, tiny_spec, write_spec
from trainables.core.attacks import pgd_l2
from trainables.core.data import DataBundle, DataConfig, DatasetInfo, load_data
from trainables.core.evaluation import (
    CertifiedEval,
    EvalConfig,
    FitEval,
    LipschitzEstimateEval,
    evaluate,
)
from trainables.core.evaluation.base import Batch
from trainables.core.layers import LAYERS
from trainables.core.methods import build_method
from trainables.core.models import ModelConfig, build_model
from trainables.core.registry import ConfigError
from trainables.core.settings import RunSettings, TrainConfig
from trainables.core.train import fit

SMALL = DatasetInfo("toy", 10, (2, 8, 8), (0.5, 0.5), (0.25, 0.25))


def model_jacobian_norm(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward mode, one batched pass per input coordinate: the inputs are the small side."""
    jacobian = torch.autograd.functional.jacobian(lambda v: model(v[None])[0], x, vectorize=True,
                                                  strategy="forward-mode")
    return float(torch.linalg.matrix_norm(jacobian.reshape(jacobian.shape[0], -1), ord=2))


MODELS = [("kwl", {"layer": layer}, head) for layer in LAYERS for head in ("plain", "lln")] + [
    ("sll_resnet", {"size": "tiny"}, "plain"), ("sll_resnet", {"size": "tiny"}, "lln"), ("dnn", {}, "lln"),
    ("toy", {"layer": "sandwich"}, None), ("toy", {"layer": "sll"}, None), ("toy", {"layer": "plain"}, None)]


@pytest.mark.parametrize(("name", "options", "head"), MODELS,
                         ids=[f"{n}-{o.get('layer', '')}-{h}" for n, o, h in MODELS])
def test_a_whole_model_never_exceeds_its_bound(name: str, options: dict, head: str) -> None:
    torch.manual_seed(0)
    head_option = {"head": head} if head else {}
    model = build_model(ModelConfig(name, {**options, "gamma": 3.0, **head_option}), SMALL).double()
    with torch.no_grad():  # away from the initialization
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.eval()
    bound = model.lipschitz_bound()
    if options.get("layer") != "plain":
        assert bound == 3.0
    bounded = model.body[:-1] if head == "lln" else model  # with LLN the bound holds for the features
    for _ in range(3):
        norm = model_jacobian_norm(bounded, torch.rand(*SMALL.shape, dtype=torch.float64))
        assert norm <= bound * (1 + 1e-4), (norm, bound)


def test_the_aol_kwl_network_is_the_references_four_stride_1_convolutions_and_sum_pooling() -> None:
    """acfr/LBDN model.py's AOL KWL on 28 x 28 inputs: weight shapes, and the output computed by
    hand from the reference's layer formulas (conv, then 1 / sqrt(sum |conv(K, K)|) per output
    channel; linear on x / sqrt(sum |W^T W|)), in float64."""
    info = DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,))
    torch.manual_seed(0)
    model = build_model(ModelConfig("kwl", {"layer": "aol", "gamma": 2.0}), info).double().eval()
    shapes = [tuple(p.shape) for n, p in model.named_parameters() if n.endswith("weight")]
    assert shapes == [(32, 1, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3),
                      (640, 64 * 7 * 7), (512, 640), (10, 512)]
    g = 2.0 ** 0.5
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    h = x - 0.2860
    convs = [m for m in model.body if m.__class__.__name__ == "AolConv"]
    linears = [m for m in model.body if m.__class__.__name__ == "AolLin"]
    for i, conv in enumerate(convs):
        k = conv.weight
        t = torch.abs(torch.nn.functional.conv2d(k, k, padding=2)).sum((1, 2, 3)) ** -0.5
        h = torch.nn.functional.conv2d((g if i == 0 else 1.0) * h, k, padding=1)
        h = torch.relu(h * t[:, None, None] + conv.bias[:, None, None])
    h = torch.nn.functional.avg_pool2d(h, 4) * 4
    h = h.flatten(1)
    for i, linear in enumerate(linears):
        w = linear.weight
        t = torch.abs(w.T @ w).sum(1) ** -0.5
        h = torch.nn.functional.linear((g if i == 2 else 1.0) * t * h, w, linear.bias)
        h = torch.relu(h) if i < 2 else h
    with torch.no_grad():
        torch.testing.assert_close(model(x), h, rtol=1e-12, atol=1e-12)


NORMALIZED = DatasetInfo("toy", 10, (2, 8, 8), (0.5, 0.4), (0.2, 0.3))


@pytest.mark.parametrize(("name", "options"), [("kwl", {"layer": "sandwich"}), ("kwl", {"layer": "plain"}),
                                               ("sll_resnet", {"size": "tiny"}), ("dnn", {"head": "plain"})])
def test_normalized_inputs_keep_the_bound_in_pixel_units(name: str, options: dict) -> None:
    """LBDN's `normalized`: (x - mean) / std per channel inside the model; the bound in pixel
    units is the network's times 1 / min(std), and no input Jacobian exceeds it."""
    torch.manual_seed(0)
    normalized = build_model(ModelConfig(name, {**options, "gamma": 2.0, "normalized": True}), NORMALIZED).double()
    centred = build_model(ModelConfig(name, {**options, "gamma": 2.0}), NORMALIZED).double()
    centred.load_state_dict(normalized.state_dict())
    normalized.eval()
    centred.eval()
    mean, std = torch.tensor(NORMALIZED.mean).view(-1, 1, 1), torch.tensor(NORMALIZED.std).view(-1, 1, 1)
    x = torch.rand(3, *NORMALIZED.shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(normalized(x), centred(mean + (x - mean) / std))
    assert normalized.lipschitz_bound() == pytest.approx(centred.lipschitz_bound() / 0.2)
    for point in x:
        assert model_jacobian_norm(normalized, point) <= normalized.lipschitz_bound() * (1 + 1e-4)


@pytest.mark.parametrize(("layer", "head"), [("sandwich", "plain"), ("aol", "lln"), ("orthogon", "plain")])
def test_pgd_inside_the_certified_radius_never_changes_a_certified_prediction(
    tiny_fashion_root: Path, layer: str, head: str
) -> None:
    settings = RunSettings(
        data=DataConfig("fashion_mnist", root=str(tiny_fashion_root), subset=300, val=0),
        model=ModelConfig("kwl", {"layer": layer, "gamma": 1.0, "head": head}),
        train=TrainConfig(epochs=3, batch_size=50, optimizer="adam", lr=1e-2),
        eval=EvalConfig(examples=100, items=[CertifiedEval(eps=[0.05, 0.2])]),
    )
    data = load_data(settings.data)
    history: list[dict] = []
    model = fit(settings, build_method("lipschitz", {}), data, on_epoch=lambda m, s, t: history.append(m))
    model.eval()
    x, y = data.test_x[:100].float() / 255, data.test_y[:100]
    with torch.no_grad():
        logits, radius = model.certify(x)
    certified = (logits.argmax(1) == y) & (radius > 1e-3)
    assert certified.sum() >= 5, f"{int(certified.sum())} certified: train longer for a meaningful check"
    assert history[-1]["certified_eps0.05_acc"] == pytest.approx(float(((logits.argmax(1) == y) & (radius > 0.05))
                                                                       .float().mean()))
    attacked_points = certified.nonzero().squeeze(1)[:16]  # 100 PGD steps each: 16 points keep the test to seconds
    xc, yc, rc = x[attacked_points], logits.argmax(1)[attacked_points], radius[attacked_points]
    eps = (0.999 * rc).view(-1, 1, 1, 1)
    attacked = pgd_l2(model, xc, yc, eps=eps, steps=100, step_size=eps / 10, clip=False)
    assert ((attacked - xc).flatten(1).norm(dim=1) <= rc * 0.9991).all()
    with torch.no_grad():
        assert torch.equal(model(attacked).argmax(1), yc), "an attack inside the radius changed a certified prediction"
    uncertified = evaluate(model, data, EvalConfig(examples=100, items=[CertifiedEval(eps=[100.0])]))
    assert uncertified["certified_eps100_acc"] == 0.0


def test_studies_set_and_search_model_and_train_settings_per_method(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = tiny_spec(tiny_fashion_root, name="lip", model={"name": "kwl", "size": "small"},
                     eval={"examples": 50, "items": [{"kind": "certified", "eps": [0.1]}]},
                     methods={"aol": {"method": "lipschitz",
                                      "model": {"layer": "aol", "gamma": {"low": 1.0, "high": 100.0, "log": True}},
                                      "train": {"lr": [0.001, 0.01]}}},
                     scheduler={"kind": "fifo"})
    loaded = load_spec(write_spec(tmp_path, spec))
    params = loaded.methods.methods["aol"]
    assert params["model.gamma"].log and params["model.gamma"].high == 100.0
    assert params["model.layer"].default == "aol" and not params["model.layer"].searchable
    assert params["train.lr"].choices == (0.001, 0.01)
    settings, rest = loaded.settings().with_overrides({"model.layer": "aol", "model.gamma": 7.0, "train.lr": 0.01,
                                                      "loss": "xent"})
    assert settings.model.options == {"size": "small", "layer": "aol", "gamma": 7.0} and settings.train.lr == 0.01
    assert rest == {"loss": "xent"} and loaded.model.options == {"size": "small"}
    swapped, _ = loaded.settings().with_overrides({"model.name": "sll_resnet", "model.size": "tiny"})
    assert swapped.model.name == "sll_resnet" and swapped.model.options == {"size": "tiny"}
    for changes, message in [
        ({"methods": {"a": {"method": "lipschitz", "model": {"depth": 3}}}}, "methods.a.model.depth: not an option of"),
        ({"methods": {"a": {"method": "lipschitz", "train": {"epochs": 3}}}}, "methods.a.train.epochs: not settable"),
        ({"model": {"name": "cw_cnn"}, "methods": {"clean": {}}}, "model.name: certified accuracy needs a Lipschitz"),
        ({"methods": {"a": {"method": "lipschitz", "model": {"name": "vgg11"}}}},
         "methods.a.model.name: certified accuracy needs a Lipschitz-bounded model"),
        ({"methods": {"a": {"method": "lipschitz", "model": {"name": "sll_resnet", "layer": "aol"}}}},
         "methods.a.model.layer: not an option of model sll_resnet; allowed: size, gamma, head"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_spec(write_spec(tmp_path, {**spec, **changes}))


def test_the_empirical_lipschitz_estimate_approaches_a_linear_model_norm_from_below() -> None:
    torch.manual_seed(0)
    linear = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 5))
    norm = float(torch.linalg.matrix_norm(linear[1].weight, ord=2))
    x = torch.rand(8, 3, 2, 2)
    batch = Batch(linear, x, x[:, 0, 0, 0], linear(x), torch.Generator())
    found = LipschitzEstimateEval(restarts=3, steps=50).correct(batch)
    assert 0.98 * norm <= float(found["lipschitz_estimate"]) <= norm * (1 + 1e-5)


def test_the_estimate_of_a_bounded_model_stays_under_its_bound() -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig("kwl", {"layer": "orthogon", "gamma": 2.0}), SMALL)
    x = (torch.rand(16, *SMALL.shape) * 255).to(torch.uint8)
    data = DataBundle(SMALL, x[:0], x[:0, 0, 0, 0].long(), x[:0], x[:0, 0, 0, 0].long(), x, x[:, 0, 0, 0].long() % 10)
    metrics = evaluate(model, data, EvalConfig(examples=None, items=[LipschitzEstimateEval(restarts=2, steps=30)],
                                               robust_metric="clean_acc"))
    assert 0 < metrics["lipschitz_ratio"] <= 1.0 and metrics["lipschitz_estimate"] <= 2.0


def test_the_toy_fits_the_square_wave_and_its_certificates_hold_on_a_dense_grid() -> None:
    settings = RunSettings(
        data=DataConfig("square_wave"),
        model=ModelConfig("toy", {"layer": "sandwich", "gamma": 5.0}),
        train=TrainConfig(epochs=60, batch_size=50, optimizer="adam", lr=0.01),
        eval=EvalConfig(examples=None, items=[FitEval(), CertifiedEval(eps=[0.05])]),
    )
    history: list[dict] = []
    data = load_data(settings.data)
    model = fit(settings, build_method("lipschitz", {"loss": "mse"}), data, on_epoch=lambda m, s, t: history.append(m))
    assert history[-1]["fit_mse"] < 0.1 < history[0]["fit_mse"]
    assert history[-1]["clean_acc"] > 0.85 and 0 < history[-1]["certified_eps0.05_acc"] <= history[-1]["clean_acc"]
    model.eval()
    x, y = data.test_x, data.test_y
    with torch.no_grad():
        out = model(x)[:, 0]
        radius = (0.5 - (out - y).abs()) / model.lipschitz_bound()
        for xi, yi, ri in zip(x.flatten(), y, radius, strict=True):
            if ri > 0:
                grid = (xi + ri * torch.linspace(-0.999, 0.999, 201)).view(-1, 1, 1, 1)
                assert ((model(grid)[:, 0] - yi).abs() < 0.5).all(), "a certified point left its level"


@pytest.mark.parametrize(("name", "options", "message"), [
    ("kwl", {"head": "x"}, "model.head: 'x' is not allowed; allowed: plain, lln"),
    ("kwl", {"gamma": 0}, "model.gamma: must be > 0, got 0"),
    ("kwl", {"layer": "soc"}, "model.layer: unknown layer family 'soc'; allowed: aol, orthogon, plain, sandwich"),
    ("sll_resnet", {"size": "huge"}, "model.size: 'huge' is not allowed; allowed: tiny, small, medium, large"),
    ("dnn", {}, r"model: dnn needs an image side divisible by 8, got \(1, 28, 28\)"),
    ("lipconvnet", {"pool": "avg"}, "model.pool: 'avg' is not allowed; allowed: max, lip"),
    ("lipconvnet", {"depth": 7}, "model.depth: LipConvNet-N takes N in 5, 10, ..., 40, got 7"),
    ("lipconvnet", {"activation": "relu"}, "model.activation: 'relu' is not allowed; allowed: maxmin, hh1, hh2"),
    ("lipconvnet", {"input_std": "median"}, "model.input_std: 'median' is not allowed; allowed: reference, mean, none"),
    ("kwl", {"normalized": "per_channel"}, "model.normalized: 'per_channel' is not allowed; allowed: False, True"),
])
def test_lipschitz_models_name_the_option_they_cannot_build(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(name, options), DatasetInfo("f", 10, (1, 28, 28), (0.5,), (0.5,)))


@pytest.mark.parametrize(("model", "methods", "eval_item", "message"), [
    ({"name": "lipconvnet", "depth": 5, "activation": "relu"}, {"a": {"method": "lipschitz"}}, {},
     "model.activation: 'relu' is not allowed; allowed: maxmin, hh1, hh2"),
    ({"name": "kwl"}, {"a": {"method": "lipschitz", "model": {"normalized": "per_channel"}}}, {},
     "methods.a.model.normalized: 'per_channel' is not allowed"),
    ({"name": "kwl"}, {"a": {"method": "lipschitz", "model": {"gamma": {"low": -1.0, "high": 3.0}}}}, {},
     "methods.a.model.gamma: must be > 0, got -1"),
    ({"name": "kwl"}, {"a": {"method": "lipschitz", "model": {"layer": ["aol", "lol"]}}}, {},
     "methods.a.model.layer: unknown layer family 'lol'"),
    ({"name": "kwl"}, {"a": {"method": "lipschitz"}}, {"certificate": "exact"},
     r"eval.items\[0\].certificate: 'exact' is not allowed; allowed: closed_form, precise"),
])
def test_bad_model_option_values_and_certificates_are_refused_when_the_spec_loads(
    tiny_fashion_root: Path, tmp_path: Path, model: dict, methods: dict, eval_item: dict, message: str
) -> None:
    """Values, not only names: the models a method entry's trials can get are built on the meta
    device when the spec loads (fixed values, each choice, each end of a range)."""
    spec = tiny_spec(tiny_fashion_root, name="badvalue", model=model, methods=methods,
                     eval={"items": [{"kind": "certified", "eps": [0.1], **eval_item}]})
    with pytest.raises(ConfigError, match=f"^{message}"):
        load_spec(write_spec(tmp_path, spec))


def test_a_bad_model_option_value_stops_the_launch_before_anything_starts(tiny_fashion_root: Path,
                                                                          tmp_path: Path) -> None:
    import subprocess

    from tests.helpers import launch_command

    model = {"name": "lipconvnet", "depth": 5, "input_std": "median"}
    spec = tiny_spec(tiny_fashion_root, name="badvalue", model=model,
                     methods={"a": {"method": "lipschitz"}}, eval={"items": [{"kind": "certified", "eps": [0.1]}]})
    done = subprocess.run(launch_command(write_spec(tmp_path, spec), "--storage", str(tmp_path / "runs")),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr == ("error: model.input_std: 'median' is not allowed; allowed: reference, mean, none, a "
                           "positive number, or a list of 1 positive numbers (one per channel)\n")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("overrides", "warned"), [
    (["train.schedule={kind: constant}"], ["sandwich", "orthogon", "aol", "sll"]),
    (["train.schedule={kind: constant}", "search.first=[]", "methods.sandwich.train.lr=0.001",
      "methods.orthogon.train.lr=0.001",
      "methods.aol.train.lr=0.001", "methods.sll.train.lr=0.001"], []),
    ([], []),  # LBDN's warm-up
    (["train.schedule={kind: constant}", "train.optimizer=sgd"], []),
])
def test_a_lipschitz_network_that_would_stall_is_warned_about_by_entry(overrides: list[str], warned: list[str],
                                                                        capsys: pytest.CaptureFixture) -> None:
    spec = ROOT / "search_spaces" / "lipschitz.yaml"
    warnings = load_spec(spec, overrides).warnings()
    assert [w.split(":")[1].strip().removeprefix("methods.") for w in warnings] == warned
    if warned:
        assert "use LBDN's warm-up" in warnings[0] and "or lr <= 0.001" in warnings[0]
        assert launch([str(spec), "--dry-run", *[a for o in overrides for a in ("--set", o)]]) == 0
        assert capsys.readouterr().err.splitlines() == warnings
