"""Each method's training-step time as a ratio to `clean`, on the same model and batch.

A step is what the training loop does per batch: the method's loss, backward, the optimizer
step and the method's after-step action. Mean of timed steps after warm-up (the mean, so that
work done every few steps counts), on this machine's CPU (or --device cuda). Prints a table;
SGR's rows also as a ratio to GN, the paper's claim being that SGR costs little more than GN
(the target: within 1.3x for the grad, sign and fgsm sources in the default form; the pgd source
adds its attack's steps).

    python benchmarks/method_step_time.py [--model cw_cnn] [--batch 128] [--steps 20] [--only sgr,gn]
"""

from __future__ import annotations

import argparse

import torch
from arguments import parse_checked  # benchmarks/arguments.py

from trainables.core.data import DatasetInfo
from trainables.core.data.cifar import CIFAR10_INFO
from trainables.core.methods import METHODS, StepContext, build_method
from trainables.core.models import ModelConfig, build_model

from timing import mean_seconds  # benchmarks/timing.py

FASHION = DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,))
VARIANTS = [
    "clean+sn_projection", "clean+sn_penalty", "clean+sn_projection@sn_mode=operator",
    "clean+sn_penalty@sn_mode=operator", "sgr@source=grad", "sgr@source=fgsm", "sgr@source=pgd",
    "sgr@source=pgd,update_every=5", "sgr@sigma_form=full",
]
SGR_TARGET = 1.3  # x GN


def method_names() -> list[str]:
    return [n for n in METHODS if not METHODS.get(n).constraint] + VARIANTS


def parse_variant(name: str) -> tuple[str, dict[str, object]]:
    """`sgr@source=pgd,update_every=5` -> ("sgr", {"source": "pgd", "update_every": 5})."""
    method_name, _, settings = name.partition("@")
    hparams: dict[str, object] = {}
    for item in filter(None, settings.split(",")):
        key, _, value = item.partition("=")
        hparams[key] = int(value) if value.isdigit() else value
    return method_name, hparams


def step_seconds(name: str, model_name: str, info: DatasetInfo, batch: int, steps: int, device: str) -> float:
    method = build_method(*parse_variant(name))
    torch.manual_seed(0)
    model = build_model(ModelConfig(model_name), info).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, *info.shape, device=device, generator=generator)
    y = torch.randint(0, info.num_classes, (batch,), device=device, generator=generator)

    def train_step(step: int) -> None:
        ctx = StepContext(epoch=0, step=step, generator=generator)
        loss = method.loss(model, x, y, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(model, ctx)

    return mean_seconds(train_step, device, steps, warmup=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cw_cnn", help="cw_cnn (28 x 28 x 1) or vgg11 / resnet18 (32 x 32 x 3)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cifar", action="store_true", help="CIFAR-10 inputs (32 x 32 x 3) for any model")
    parser.add_argument("--only", help="comma-separated prefixes of the rows to time (clean always)")
    args = parse_checked(parser, positive=("batch", "steps"))
    info = CIFAR10_INFO if args.cifar or args.model not in ("cw_cnn", "mlp") else FASHION
    names = method_names()
    if args.only:
        names = ["clean"] + [n for n in names if n != "clean" and n.startswith(tuple(args.only.split(",")))]
    rows = [(name, step_seconds(name, args.model, info, args.batch, args.steps, args.device)) for name in names]
    times = dict(rows)
    print(f"{args.model} on {info.shape}, batch {args.batch}, {args.device} ({torch.get_num_threads()} threads), "
          f"mean of {args.steps} steps")
    print(f"{'method':<36} | {'step ms':>8} | {'x clean':>7} | {'x gn':>5}")
    print(f"{'-' * 36}-+-{'-' * 8}-+-{'-' * 7}-+-{'-' * 5}")
    for name, seconds in rows:
        versus_gn = f"{seconds / times['gn']:>5.2f}" if name.startswith(("sgr", "gn")) and "gn" in times else ""
        print(f"{name:<36} | {seconds * 1000:>8.1f} | {seconds / times['clean']:>7.2f} | {versus_gn:>5}")
    claimed = [n for n in times if n.startswith("sgr") and "pgd" not in n and "full" not in n]
    over = [n for n in claimed if "gn" in times and times[n] / times["gn"] > SGR_TARGET]
    if over:
        print(f"above the {SGR_TARGET}x GN target: {', '.join(over)}")


if __name__ == "__main__":
    main()
