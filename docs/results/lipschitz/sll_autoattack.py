"""Why an SLL network keeps 8 of 50 Fashion-MNIST images under AutoAttack at l2 1.0 (docs/results.md,
claim 3): per image the margin, the certified radius it implies, the local input-gradient norm
of the margin, the minimum-norm radius (FMN, DDN), and whether APGD-CE, APGD-T and Square break it.

    python -m study.launch docs/results/specs/lipschitz_sll.yaml --storage runs
    python docs/results/lipschitz/sll_autoattack.py --checkpoint runs/lipschitz_sll-*/train_trial_*/checkpoint_000002 \\
        --spec docs/results/specs/lipschitz_sll.yaml
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from study.evaluate import from_checkpoint  # noqa: E402
from trainables.core.data import load_data  # noqa: E402
from trainables.core.evaluation import EvalConfig, run_evaluation  # noqa: E402
from trainables.core.evaluation.base import metric_name  # noqa: E402
from trainables.core.evaluation.config import evaluation_order  # noqa: E402
from trainables.core.models import build_model  # noqa: E402
from trainables.core.schema import parse  # noqa: E402

EPS = 1.0
ITEMS = [{"kind": "autoattack", "norm": "l2", "eps": [EPS], "version": "standard"},
         {"kind": "min_norm", "norm": "l2", "attacks": ["fmn", "ddn"], "eps": [EPS]}]


def margin_and_gradient(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example the margin z_y - max_{j != y} z_j and the l2 norm of its input gradient."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    other = logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -math.inf).amax(1)
    margin = logits.gather(1, y[:, None]).squeeze(1) - other
    (gradient,) = torch.autograd.grad(margin.sum(), x)
    return margin.detach(), gradient.flatten(1).norm(dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--examples", type=int, default=50)
    args = parser.parse_args()
    spec, weights = from_checkpoint(args.checkpoint, args.spec)
    data = load_data(spec.data)
    model = build_model(spec.model, data.info)
    model.load_state_dict(weights)
    model.eval()
    config = parse(EvalConfig, {"split": "test", "examples": args.examples, "items": ITEMS}, "eval")
    result = run_evaluation(model, data, config, progress=True)
    records = result.tables["examples"]
    x_all, y_all = data.split("test")
    index = evaluation_order(y_all, 0)[: args.examples]
    x, y = x_all[index].float() / 255, y_all[index]
    margin, gradient = margin_and_gradient(model, x, y)
    bound = model.lipschitz_bound()
    certified = margin / (math.sqrt(2) * bound)
    radius = result.tables["min_norm_l2"]["radius"]
    name = metric_name("autoattack_l2", EPS)
    robust = records[name]
    broken = {k.removeprefix(f"autoattack_l2_eps{EPS:.4g}_").removesuffix("_broken"): int(v)
              for k, v in result.metrics.items() if k.endswith("_broken")}
    print(f"bound {bound:.3f}; clean {result.metrics['clean_acc']:.3f}; AutoAttack (standard) l2 {EPS}: "
          f"{result.metrics[name]:.3f} (broken per attack: {broken}); warnings: {result.warnings or 'none'}")
    print("| index | label | margin | certified radius | margin / gradient norm | min-norm radius | AutoAttack |")
    print("|---|---|---|---|---|---|---|")
    for i in range(len(y)):
        if records["clean_acc"][i]:
            print(f"| {int(index[i])} | {int(y[i])} | {margin[i]:.3f} | {certified[i]:.3f} | "
                  f"{margin[i] / gradient[i]:.3f} | {radius[i]:.3f} | {'kept' if robust[i] else 'broken'} |")
    kept = robust.bool()
    print(f"kept: {int(kept.sum())}; their min-norm radii {radius[kept].tolist()}; "
          f"min-norm radius <= {EPS} among kept: {int((radius[kept] <= EPS).sum())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
