"""Training throughput on a GPU: one trial alone against four trials sharing the GPU at 0.25 each
(Ray's fractional resources, as a study packs them), per model, precision and method.

Each trial is the project's own training loop (`core.fit`, one epoch over synthetic CIFAR-sized
uint8 images held on the GPU, so no input pipeline is measured), run in a Ray task with
`num_gpus` 1 or 0.25. Images per second count every trial's training images over the window
from the first trial's start of training to the last one's end; GPU utilization is sampled
every 0.2 s with nvidia-smi over the same window. Prints a table; without a GPU it says so in
one line and exits with status 1. Targets: >= 85 % utilization with 4 fractional trials,
>= 3x the throughput of one trial.

    python benchmarks/gpu_throughput.py [--images 20000] [--batch 256]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import threading
import time

import ray
import torch
from arguments import parse_checked  # benchmarks/arguments.py

from trainables.core.data import DataBundle, DataConfig
from trainables.core.data.cifar import CIFAR10_INFO
from trainables.core.evaluation import AttackEval, EvalConfig
from trainables.core.methods import build_method
from trainables.core.models import ModelConfig
from trainables.core.settings import RunSettings, TrainConfig
from trainables.core.train import fit

MODELS = {"cw_cnn": ModelConfig("cw_cnn", {"widths": "cifar"}), "resnet18": ModelConfig("resnet18", {})}
METHODS = {"clean": {"weight_decay": 0.0}, "pgd_l2": {"epsilon": 0.5, "steps": 7}, "loss_gradl2": {"lambda": 0.1}}


def synthetic_cifar(images: int, seed: int) -> DataBundle:
    """Random CIFAR-shaped images and labels (what is timed is the training step, not the data)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    y = torch.randint(0, 10, (images,), generator=generator)
    return DataBundle(CIFAR10_INFO, x, y, x[:0], y[:0], x[:64], y[:64])


@ray.remote
def train_window(model: str, method: str, precision: str, images: int, batch: int, seed: int) -> tuple[float, float]:
    """(start, end) wall-clock times of one epoch of training on the GPU Ray assigned."""
    settings = RunSettings(
        data=DataConfig("cifar10"),
        model=MODELS[model],
        train=TrainConfig(epochs=1, batch_size=batch, optimizer="sgd", lr=0.01, precision=precision, device="cuda",
                          channels_last=True, seed=seed),
        eval=EvalConfig(examples=64, items=[AttackEval(attack="pgd_l2", eps=[0.5], steps=1)]),
    )
    window: list[float] = []

    def record(metrics: dict, snapshot: object, tables: object) -> None:
        ended = time.time() - metrics.get("eval_time_s", 0.0)
        window.extend([ended - metrics["train_time_s"], ended])

    fit(settings, build_method(method, METHODS[method]), synthetic_cifar(images, seed), on_epoch=record)
    return window[0], window[1]


class UtilizationSampler(threading.Thread):
    """GPU utilization (%) from nvidia-smi every `period` seconds, with the time of each sample."""

    def __init__(self, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.period, self.samples, self.running = period, [], True

    def run(self) -> None:
        while self.running:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, check=False).stdout.split()
            if out:
                self.samples.append((time.time(), float(out[0])))
            time.sleep(self.period)

    def mean(self, start: float, end: float) -> float:
        inside = [value for at, value in self.samples if start <= at <= end]
        return statistics.fmean(inside) if inside else float("nan")


def measure(model: str, method: str, precision: str, trials: int, images: int, batch: int,
            sampler: UtilizationSampler) -> tuple[float, float]:
    """(images per second over all trials, mean GPU utilization) with `trials` trials sharing the GPU."""
    share = 1.0 / trials
    windows = ray.get([train_window.options(num_gpus=share).remote(model, method, precision, images, batch, seed)
                       for seed in range(trials)])
    start, end = min(w[0] for w in windows), max(w[1] for w in windows)
    return trials * images / (end - start), sampler.mean(start, end)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000, help="training images per trial")
    parser.add_argument("--batch", type=int, default=256)
    args = parse_checked(parser, positive=("images", "batch"))
    if not torch.cuda.is_available():
        print("gpu_throughput: no GPU visible (torch.cuda.is_available() is False); run it on a machine with one")
        return 1
    ray.init(include_dashboard=False)
    sampler = UtilizationSampler()
    sampler.start()
    print(f"{torch.cuda.get_device_name()}; {args.images} images per trial, batch {args.batch}, channels_last")
    print(f"{'model':>8} | {'precision':>9} | {'method':>11} | {'1 trial img/s':>13} | {'util %':>6} | "
          f"{'4 x 0.25 img/s':>14} | {'util %':>6} | {'4 / 1':>5}")
    print("-" * 98)
    for model in MODELS:
        for precision in ("fp32", "bf16"):
            for method in METHODS:
                ray.get(train_window.options(num_gpus=1.0).remote(model, method, precision, 2 * args.batch,
                                                                  args.batch, 0))  # compile kernels, warm caches
                one, one_util = measure(model, method, precision, 1, args.images, args.batch, sampler)
                four, four_util = measure(model, method, precision, 4, args.images, args.batch, sampler)
                print(f"{model:>8} | {precision:>9} | {method:>11} | {one:>13.0f} | {one_util:>6.0f} | "
                      f"{four:>14.0f} | {four_util:>6.0f} | {four / one:>5.2f}", flush=True)
    sampler.running = False
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
