"""`lipschitz`: training a Lipschitz-bounded model (a `kwl` network in any layer family) with the
LBDN losses. The bound itself is the model's (`model.gamma`, searched per method entry with
`model: {gamma: {low, high, log}}`); this method chooses the loss:
`multimargin` (multi-class hinge with `margin`, 0.5 for CIFAR-10 in LBDN) or `xent`, the
Lipschitz cross-entropy CE((z - offset * onehot) / temperature) * temperature, which asks for a
margin the certificate can use (LBDN: offset sqrt2 * 1.5, temperature 0.25); `mse` for the
one-output regression of the toy (square_wave). `cr` adds Singla & Feizi's certificate
regularization, - cr * mean(relu(certified radius of the true label)), for models that certify
(the true label's: a misclassified point adds nothing, as in singlasahil14/SOC)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from trainables.core.methods import METHODS, Method, StepContext
from trainables.core.params import Param
from trainables.core.registry import ConfigError


def lipschitz_xent(logits: torch.Tensor, y: torch.Tensor, offset: float, temperature: float) -> torch.Tensor:
    shifted = logits - offset * F.one_hot(y, logits.shape[1]).to(logits.dtype)
    return F.cross_entropy(shifted / temperature, y) * temperature


@METHODS.register("lipschitz")
class LipschitzTraining(Method):
    families = ("lbdn",)
    params = {
        "loss": Param("categorical", "xent", choices=("xent", "multimargin"), allowed=("xent", "multimargin", "mse"),
                      doc="xent, multi-class hinge, or mse (a one-output regression)"),
        "margin": Param("float", 0.5, minimum=0.0, doc="multimargin: the hinge's margin"),
        "offset": Param("float", 1.5 * 2 ** 0.5, minimum=0.0, doc="xent: subtracted from the true logit"),
        "temperature": Param("float", 0.25, minimum=1e-6, doc="xent: logits divided, loss multiplied"),
        "cr": Param("float", 0.0, minimum=0.0,
                    doc="certificate regularization: minus cr * mean relu(the true label's radius)"),
    }
    source = "LBDN (Wang & Manchester 2023): losses of Lipschitz-bounded networks"

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, ctx: StepContext) -> torch.Tensor:
        if self.hp["cr"] > 0:
            if not hasattr(model, "certify"):
                raise ConfigError("cr: certificate regularization needs a Lipschitz-bounded model")
            logits, radius = model.certify(x, fresh=False, labels=y)
            regularizer = self.hp["cr"] * F.relu(radius).mean()
        else:
            logits, regularizer = model(x), 0.0
        if self.hp["loss"] == "mse":
            return F.mse_loss(logits[:, 0], y) - regularizer
        if self.hp["loss"] == "multimargin":
            return F.multi_margin_loss(logits, y, margin=self.hp["margin"]) - regularizer
        return lipschitz_xent(logits, y, self.hp["offset"], self.hp["temperature"]) - regularizer
