"""What strong evaluation costs: on the full quickstart's model (cw_cnn trained on 2,000
Fashion-MNIST images), seconds of PGD-20, AutoAttack fast and standard, and min_norm (FMN + DDN +
FAB) on the first N test images, as ratios to one clean training epoch; the project's AutoAttack
against calling the library's attacks directly in the same cascade (the overhead of verification
and bookkeeping; target <= 1.5x); and, with --torchattacks, the project's `autoattack` item
(standard) against torchattacks 3.5.1's AutoAttack(version='standard', norm='L2'), what a user
would pick instead, on a gradient-penalty model at l2 eps 1 and 2 (target <= 1.1x its time at
equal or lower accuracy).

    python benchmarks/eval_cost.py [--examples 1000] [--epochs 4] [--torchattacks 100]
    pip install --no-deps torchattacks==3.5.1    # for --torchattacks (the `bench` extra)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml
from arguments import parse_checked  # benchmarks/arguments.py

from trainables.core.data import DataConfig, load_data
from trainables.core.evaluation import (
    AttackEval,
    AutoAttackEval,
    EvalConfig,
    MinNormEval,
    correct_predictions,
    run_evaluation,
    verified,
)
from trainables.core.evaluation.autoattack import ATTACKS, VERSIONS
from trainables.core.evaluation.config import evaluation_order
from trainables.core.evaluation.library import adv_lib
from trainables.core.methods import build_method
from trainables.core.schema import parse
from trainables.core.settings import RunSettings
from trainables.core.train import fit

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart_full.yaml"
EPS = 1.0


def quickstart_model(epochs: int, method: str = "clean",
                     options: dict | None = None) -> tuple[torch.nn.Module, object, float]:
    """The full quickstart's model trained with `method`, and the seconds of one training epoch."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    settings = parse(RunSettings, {key: raw[key] for key in ("data", "model", "train")}
                     | {"train": {**raw["train"], "epochs": epochs}}, "")
    data = load_data(DataConfig(**{**raw["data"], "val": 0}))
    times: list[float] = []
    model = fit(settings, build_method(method, options or {}), data,
                on_epoch=lambda m, s, t: times.append(m["epoch_time_s"]))
    return model.eval(), data, min(times)


def timed(function: object) -> tuple[float, object]:
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def library_cascade(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, version: str) -> float:
    """The same cascade with the library's attacks called directly, success as AutoAttack's own
    code reads it: misclassified and within eps (no check of the box, finiteness or float64
    distances)."""
    with torch.no_grad():
        alive = model(x).argmax(1) == y
    for attack in VERSIONS[version]:
        index = alive.nonzero()[:, 0]
        if not len(index):
            break
        torch.manual_seed(0)
        options = {"n_queries": 5000} if attack == "square" else {"n_iter": 100}
        with torch.enable_grad():
            adversarial = ATTACKS[attack](model, x[index], y[index], eps=EPS, norm="l2", **options)
        with torch.no_grad():
            within = (adversarial - x[index]).flatten(1).norm(dim=1) <= EPS
            alive[index[(model(adversarial).argmax(1) != y[index]) & within]] = False
    return float(alive.float().mean())


def against_torchattacks(examples: int, epochs: int) -> None:
    """The project's AutoAttack standard (AutoAttack's 100 iterations, and torchattacks' 10)
    against torchattacks' AutoAttack standard, per eps, on the first `examples` of the
    evaluation order of a gradient-penalty model; torchattacks' outputs re-verified alike."""
    import torchattacks

    model, data, _ = quickstart_model(epochs, "gradient_penalty", {"lambda": 0.1})
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    x_all, y_all = data.split("test")
    index = evaluation_order(y_all, 0)[:examples]
    x, y = x_all[index].float() / 255, y_all[index]
    print(f"\ngradient-penalty model (lambda 0.1, {epochs} epochs), the first {examples} test images of the "
          "evaluation order, torch threads: " + str(torch.get_num_threads()))
    print("| l2 eps | torchattacks s (acc) | project n_iter 100 s (acc) | / torchattacks | "
          "project n_iter 10 s (acc) | / torchattacks |")
    print("|---|---|---|---|---|---|")
    for eps in (1.0, 2.0):
        attack = torchattacks.AutoAttack(model, norm="L2", eps=eps, version="standard", n_classes=10, seed=0)
        library_s, adversarial = timed(lambda attack=attack: attack(x, y))
        with torch.no_grad():
            broken = verified(model, x, adversarial, y, "l2", eps)
            library_acc = float((correct_predictions(model(x), y) & ~broken).float().mean())
        cells = [f"{eps:g}", f"{library_s:.1f} ({library_acc:.3f})"]
        for n_iter in (100, 10):
            config = EvalConfig(examples=examples, batch_size=500,
                                items=[AutoAttackEval(norm="l2", eps=[eps], version="standard", n_iter=n_iter)])
            seconds, result = timed(lambda config=config: run_evaluation(model, data, config))
            cells += [f"{seconds:.1f} ({result.metrics['robust_acc']:.3f})", f"{seconds / library_s:.2f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--torchattacks", type=int, metavar="N",
                        help="only the comparison with torchattacks' AutoAttack, on N images")
    args = parse_checked(parser, positive=("examples", "epochs", "torchattacks"))
    if args.torchattacks:
        against_torchattacks(args.torchattacks, args.epochs)
        return
    torch.set_num_threads(torch.get_num_threads())
    model, data, epoch_s = quickstart_model(args.epochs)
    adv_lib()  # its import (seconds: it loads visdom) is not evaluation time
    items = {
        "PGD-20": AttackEval(attack="pgd_l2", eps=[EPS], steps=20),
        "AutoAttack fast": AutoAttackEval(norm="l2", eps=[EPS], version="fast"),
        "AutoAttack standard": AutoAttackEval(norm="l2", eps=[EPS], version="standard"),
        "min_norm (fmn, ddn, fab)": MinNormEval(norm="l2", eps=[EPS]),
    }
    print(f"quickstart model, {args.examples} test images, l2 eps {EPS}; one clean training epoch {epoch_s:.2f} s\n")
    print("| evaluation | seconds | x one training epoch | robust accuracy |")
    print("|---|---|---|---|")
    project = {}
    for name, item in items.items():
        config = EvalConfig(examples=args.examples, batch_size=500, items=[item])
        seconds, result = timed(lambda config=config: run_evaluation(model, data, config))
        project[name] = seconds
        print(f"| {name} | {seconds:.1f} | {seconds / epoch_s:.1f} | {result.metrics['robust_acc']:.3f} |", flush=True)
    x_all, y_all = data.split("test")
    print("\n| cascade | project s | library direct s | project / direct | accuracy (direct) |")
    print("|---|---|---|---|---|")
    for version in ("fast", "standard"):
        seconds, robust = 0.0, 0.0
        for start in range(0, args.examples, 500):
            x = x_all[start:min(start + 500, args.examples)].float() / 255
            y = y_all[start:min(start + 500, args.examples)]
            batch_seconds, accuracy = timed(lambda x=x, y=y, version=version: library_cascade(model, x, y, version))
            seconds += batch_seconds
            robust += accuracy * len(y) / args.examples
        ours = project[f"AutoAttack {version}"]
        print(f"| AutoAttack {version} | {ours:.1f} | {seconds:.1f} | {ours / seconds:.2f} | {robust:.3f} |",
              flush=True)


if __name__ == "__main__":
    main()
