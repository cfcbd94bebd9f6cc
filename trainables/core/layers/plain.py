"""Plain (unconstrained) layers: the baseline the Lipschitz families are compared with. No bound
holds by construction; a plain network's bound is the product of its layers' spectral norms."""

from __future__ import annotations

from torch import nn

from trainables.core.layers import LAYERS, LayerFamily


def plain_fc(fin: int, fout: int, scale: float = 1.0) -> nn.Module:
    return nn.Sequential(nn.Linear(fin, fout), nn.ReLU())


def plain_lin(fin: int, fout: int, scale: float = 1.0) -> nn.Module:
    return nn.Linear(fin, fout)


def plain_conv(cin: int, cout: int, size: int, stride: int = 1, scale: float = 1.0) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1), nn.ReLU())


LAYERS.register("plain")(LayerFamily(fc=plain_fc, lin=plain_lin, conv=plain_conv, certified=False))
