"""Lipschitz layer families against Plain, per layer, as ratios (the comparison of the
"1-Lipschitz layers compared" benchmark): training-step time (forward, backward, SGD step) and
peak memory of a convolution and of a fully connected layer, and the evaluation forward with
the cached parameterization against recomputing it every call.

Memory: the bytes a training forward keeps for the backward pass (activations and
parameterization intermediates, counted by autograd's saved-tensor hooks; the part of the peak
that differs between families), and on a GPU also torch's peak allocation of the steps.

    python benchmarks/lipschitz_layers.py [--device cpu] [--batch 64] [--channels 64] [--size 16]
"""

from __future__ import annotations

import argparse

import torch
from arguments import parse_checked  # benchmarks/arguments.py
from torch import nn

from trainables.core.layers import LAYERS
from trainables.core.layers.sll import SllConv, SllFc

from timing import mean_seconds  # benchmarks/timing.py

KINDS = ("conv", "fc")


def build(family: str, kind: str, channels: int, size: int, features: int) -> nn.Module:
    if family == "sll":
        return SllConv(channels, channels) if kind == "conv" else SllFc(features, features)
    builders = LAYERS.get(family)
    return builders.conv(channels, channels, size, 1, 1.0) if kind == "conv" else builders.fc(features, features, 1.0)


def measure(family: str, kind: str, args: argparse.Namespace) -> dict[str, float]:
    """Train-step and eval times (cached and recomputed) of one layer; its peak memory on a GPU."""
    torch.manual_seed(0)
    layer = build(family, kind, args.channels, args.size, args.features).to(args.device)
    shape = (args.batch, args.channels, args.size, args.size) if kind == "conv" else (args.batch, args.features)
    x = torch.randn(shape, device=args.device)
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3)

    def train_step() -> None:
        layer.train()
        optimizer.zero_grad(set_to_none=True)
        layer(x).square().mean().backward()
        optimizer.step()

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train = mean_seconds(lambda _: train_step(), args.device, args.repeats)
    peak = torch.cuda.max_memory_allocated() / 2 ** 20 if args.device == "cuda" else float("nan")
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    layer.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(x).square().mean()
    with torch.no_grad():
        layer.eval()
        cached = mean_seconds(lambda _: layer(x), args.device, args.repeats)
        layer.train()  # a training-mode forward recomputes the parameterization every call
        recomputed = mean_seconds(lambda _: layer(x), args.device, args.repeats)
    return {"train": train, "cached": cached, "recomputed": recomputed, "peak_mb": peak,
            "saved_mb": sum(saved.values()) / 2 ** 20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    args = parse_checked(parser, positive=("batch", "channels", "size", "features", "repeats"))
    families = ["plain", *[n for n in LAYERS if n != "plain"], "sll"]
    rows = {(family, kind): measure(family, kind, args) for family in families for kind in KINDS}
    print(f"{args.device} ({torch.get_num_threads()} threads), batch {args.batch}; conv {args.channels} -> "
          f"{args.channels} channels at {args.size} x {args.size}; fc {args.features} -> {args.features}")
    memory = "peak_mb" if args.device == "cuda" else "saved_mb"
    print(f"{'layer':<10} {'kind':<5} | {'step ms':>8} | {'x plain':>7} | {memory:>8} | {'x plain':>7} | "
          f"{'eval ms':>8} | {'uncached ms':>11} | {'uncached / cached':>17}")
    for (family, kind), r in rows.items():
        plain = rows["plain", kind]
        print(f"{family:<10} {kind:<5} | {r['train'] * 1e3:>8.2f} | {r['train'] / plain['train']:>7.2f} | "
              f"{r[memory]:>8.1f} | {r[memory] / plain[memory]:>7.2f} | "
              f"{r['cached'] * 1e3:>8.2f} | {r['recomputed'] * 1e3:>11.2f} | {r['recomputed'] / r['cached']:>17.2f}")


if __name__ == "__main__":
    main()
