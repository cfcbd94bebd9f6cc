"""SOC training-step time with the fast-training backward against plain autograd, as a ratio:
a single SOC layer and a whole LipConvNet-N, same inputs, same optimizer (SGD). The paper
reports over 30% less time per epoch for deeper networks.

    python benchmarks/soc_fast_train.py [--device cpu] [--batch 64] [--depth 10] [--channels 32]
"""

from __future__ import annotations

import argparse

import torch
from arguments import parse_checked  # benchmarks/arguments.py
from torch import nn

from trainables.core.data.cifar import CIFAR10_INFO
from trainables.core.layers.soc import SocConv
from trainables.core.models import ModelConfig, build_model

from timing import mean_seconds  # benchmarks/timing.py


def step_seconds(model: nn.Module, x: torch.Tensor, device: str, repeats: int) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()

    def train_step(_: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        optimizer.step()

    return mean_seconds(train_step, device, repeats, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--channels", type=int, default=32, help="LipConvNet init_channels and the layer's width")
    parser.add_argument("--repeats", type=int, default=5)
    args = parse_checked(parser, positive=("batch", "depth", "channels", "repeats"))
    rows = []
    for name in ("SOC layer", f"LipConvNet-{args.depth}"):
        times = {}
        for fast in (False, True):
            torch.manual_seed(0)
            if name == "SOC layer":
                model = SocConv(args.channels, args.channels, 16, fast=fast).to(args.device)
                x = torch.randn(args.batch, args.channels, 16, 16, device=args.device)
            else:
                model = build_model(ModelConfig("lipconvnet", {"depth": args.depth, "init_channels": args.channels,
                                                               "fast": fast}), CIFAR10_INFO).to(args.device)
                x = torch.rand(args.batch, *CIFAR10_INFO.shape, device=args.device)
            times[fast] = step_seconds(model, x, args.device, args.repeats)
        rows.append((name, times[False], times[True]))
    print(f"{args.device} ({torch.get_num_threads()} threads), batch {args.batch}, 6 series terms in training")
    print(f"{'model':<16} | {'autograd ms':>11} | {'fast ms':>8} | {'fast / autograd':>15}")
    for name, slow, fast in rows:
        print(f"{name:<16} | {slow * 1e3:>11.1f} | {fast * 1e3:>8.1f} | {fast / slow:>15.2f}")


if __name__ == "__main__":
    main()
