"""LipConvNet-N (Singla & Feizi): SOC convolutions in 5 blocks of N / 5 layers. The first layer
maps the input to `init_channels`; each of the first four blocks ends in a stride-2 SOC layer
(4x the channels, by space-to-depth) and a channel pooling that halves them; the fifth block
uses 1 x 1 kernels, its first layer with stride 2. Activations: MaxMin or HH1; pooling: max or
the l2-distance-to-manifold LipPool; heads: a 1 x 1 SOC layer (plain), LLN, or the curvature-
certified MLP (whose features skip the last pooling). Inputs are zero-padded to a multiple of
32 (Fashion-MNIST: 28 -> 32), an isometry. The network's bound is the product of its SOC
layers' bounds as evaluated, never an assumed 1."""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

from trainables.core.data import DatasetInfo
from trainables.core.layers.soc import (
    HouseholderActivation,
    LipPool,
    MaxMin,
    MaxPool,
    SecondOrderHouseholder,
    SocConv,
)
from trainables.core.models import MODELS
from trainables.core.models.lipschitz import (
    LIPSCHITZ_MODELS,
    Center,
    CurvatureHead,
    LipschitzNet,
    NormalizedLinear,
    check_options,
)
from trainables.core.models.references import SOC, reference_stats
from trainables.core.registry import ConfigError

ACTIVATIONS = {"maxmin": lambda channels: MaxMin(), "hh1": HouseholderActivation, "hh2": SecondOrderHouseholder}
POOLS = {"max": lambda channels: MaxPool(), "lip": LipPool}
HEADS = ("plain", "lln", "mlp")


class PadTo(nn.Module):
    """Zero-pad the image's bottom and right to `size` x `size`."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, (0, self.size - x.shape[-1], 0, self.size - x.shape[-2]))


def positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def input_scale(info: DatasetInfo, input_std: float | str | list[float] | None) -> float | tuple[float, ...]:
    """What `input_std` divides the centred inputs by: one number, or one per channel."""
    if input_std == "reference":
        return reference_stats(info, SOC)[1][0] if info.name in SOC else input_scale(info, "mean")
    if input_std == "mean":
        return sum(info.std) / len(info.std)
    if input_std in ("none", None):
        return 1.0
    if positive(input_std):
        return float(input_std)
    if isinstance(input_std, list | tuple) and len(input_std) == info.shape[0] and all(map(positive, input_std)):
        return tuple(float(v) for v in input_std)
    raise ConfigError(f"model.input_std: {input_std!r} is not allowed; allowed: reference, mean, none, a positive "
                      f"number, or a list of {info.shape[0]} positive numbers (one per channel)")


@MODELS.register("lipconvnet")
def lipconvnet(info: DatasetInfo, depth: int = 10, init_channels: int = 32, activation: str = "maxmin",
               pool: str = "max", head: str = "plain", fast: bool = False, hidden: int = 4096, train_terms: int = 6,
               eval_terms: int = 15, input_std: float | str | list[float] = "reference") -> nn.Module:
    """`depth`: N in 5, 10, ..., 40; `activation`: maxmin | hh1 | hh2; `pool`: max | lip; `head`:
    plain | lln | mlp (`hidden` units); `fast`: SOC's fast-training backward; the series
    has `train_terms` terms in training and `eval_terms` in evaluation; `input_std`: the inputs,
    centred by the reference's mean, are divided by one number: `reference` (SOC's 0.2507 on
    CIFAR-10 and CIFAR-100, elsewhere as `mean`), `mean` (the mean of the data set's channel
    stds), a positive number, one per channel, or `none` (centring only). The bound gains 1 / the
    smallest."""
    if depth % 5 or not 5 <= depth <= 40:
        raise ConfigError(f"model.depth: LipConvNet-N takes N in 5, 10, ..., 40, got {depth}")
    check_options("lipconvnet", info.shape, 1, {"activation": (activation, tuple(ACTIVATIONS)),
                                                "pool": (pool, tuple(POOLS)), "head": (head, HEADS)})
    channels, height, width = info.shape
    size = -(-max(height, width) // 32) * 32
    per_block = depth // 5
    soc = {"train_terms": train_terms, "eval_terms": eval_terms, "fast": fast}
    layers: list[nn.Module] = [Center(reference_stats(info, SOC)[0], input_scale(info, input_std)), PadTo(size)]
    layers += [SocConv(channels, init_channels, size, **soc), ACTIVATIONS[activation](init_channels)]
    c = init_channels
    for block in range(5):
        last_block = block == 4
        for i in range(per_block):
            stride = 2 if (i == 0 if last_block else i == per_block - 1) else 1
            kernel = 1 if last_block else 3
            layers.append(SocConv(c, c * stride * stride, size, stride, kernel, **soc))
            c, size = c * stride * stride, size // stride
            closes_block = i == per_block - 1
            if closes_block and not (last_block and head == "mlp"):
                layers.append(POOLS[pool](c))
                c //= 2
            else:
                layers.append(ACTIVATIONS[activation](c))
    features = c * size * size
    if head == "plain":
        layers += [SocConv(c, info.num_classes, size, 1, 1, **soc), nn.Flatten()]
    elif head == "lln":
        layers += [nn.Flatten(), NormalizedLinear(features, info.num_classes)]
    else:
        layers += [nn.Flatten(), CurvatureHead(features, hidden, info.num_classes)]
    return LipschitzNet(nn.Sequential(*layers), head, None, info.shape)


LIPSCHITZ_MODELS.add("lipconvnet")
