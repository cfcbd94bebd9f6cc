"""Each method's training-step time as a ratio to `clean`, on the same model and batch.

A step is what the training loop does per batch: the method's loss, backward, the optimizer
step and the method's after-step action. Median of timed steps after warm-up, on this
machine's CPU (or --device cuda). Prints a table.

    python benchmarks/method_step_time.py [--model cw_cnn] [--batch 128] [--steps 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainables.core.data import DatasetInfo
from trainables.core.data.cifar import CIFAR10_INFO
from trainables.core.methods import METHODS, StepContext, build_method
from trainables.core.models import ModelConfig, build_model

FASHION = DatasetInfo("fashion_mnist", 10, (1, 28, 28), (0.2860,), (0.3530,))
COMBINED = ["clean+sn_projection", "clean+sn_penalty", "clean+sn_projection@operator", "clean+sn_penalty@operator"]


def method_names() -> list[str]:
    return [n for n in METHODS if not METHODS.get(n).constraint] + COMBINED


def step_seconds(name: str, model_name: str, info: DatasetInfo, batch: int, steps: int, device: str) -> float:
    method_name, _, mode = name.partition("@")
    hparams = {"sn_mode": mode} if mode else {}
    method = build_method(method_name, hparams)
    torch.manual_seed(0)
    model = build_model(ModelConfig(model_name), info).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, *info.shape, device=device, generator=generator)
    y = torch.randint(0, info.num_classes, (batch,), device=device, generator=generator)
    times = []
    for step in range(steps + 5):
        ctx = StepContext(epoch=0, step=step, generator=generator)
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        loss = method.loss(model, x, y, ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(model, ctx)
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 5:
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cw_cnn", help="cw_cnn (28 x 28 x 1) or vgg11 / resnet18 (32 x 32 x 3)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    info = FASHION if args.model in ("cw_cnn", "mlp") else CIFAR10_INFO
    rows = [(name, step_seconds(name, args.model, info, args.batch, args.steps, args.device))
            for name in method_names()]
    clean = dict(rows)["clean"]
    print(f"{args.model}, batch {args.batch}, {args.device} ({torch.get_num_threads()} threads), "
          f"median of {args.steps} steps")
    print(f"{'method':<30} | {'step ms':>8} | {'x clean':>7}")
    print(f"{'-' * 30}-+-{'-' * 8}-+-{'-' * 7}")
    for name, seconds in rows:
        print(f"{name:<30} | {seconds * 1000:>8.1f} | {seconds / clean:>7.2f}")


if __name__ == "__main__":
    main()
