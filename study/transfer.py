"""Transfer attacks between the trained models of one or more studies, as in the SGR paper's
transfer tables: adversarial examples made on each (source) model, every (target) model
evaluated on them.

    python -m study.transfer --tracking-uri URI --experiment STUDY [--experiment STUDY2 ...]
        [--select best|front|all] [--attack pgd_linf --eps 0.1 --steps 20] [--examples 1000]

Writes transfer.csv (rows: the evaluated model; columns: `clean` accuracy, then the model the
examples were made on; the diagonal is the white-box accuracy) and transfer.png (a heatmap),
and logs both to every study's parent run under `transfer/`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from torch import nn  # noqa: E402

from analysis.pareto import best_per_method, completed, pareto_front, study_trials  # noqa: E402
from analysis.records import find_study_run  # noqa: E402
from study.evaluate import from_run  # noqa: E402
from study.spec import StudySpec  # noqa: E402
from trainables.core.attacks import ATTACKS  # noqa: E402
from trainables.core.data import DataBundle, eval_batches, load_data  # noqa: E402
from trainables.core.evaluation import AttackEval  # noqa: E402
from trainables.core.models import build_model  # noqa: E402
from trainables.core.registry import ConfigError  # noqa: E402
from trainables.core.settings import resolve_device  # noqa: E402

SELECTIONS = ("best", "front", "all")


@dataclass
class TrainedModel:
    label: str
    run_id: str
    spec: StudySpec
    model: nn.Module


def select_runs(trials: pd.DataFrame, selection: str) -> pd.DataFrame:
    """`best`: per method, the finished full-budget trial with the highest robust accuracy (then
    clean); `front`: the Pareto front; `all`: every finished full-budget trial."""
    if trials.empty:
        return trials
    return {"best": best_per_method, "front": pareto_front, "all": completed}[selection](trials)


def load_models(client: MlflowClient, rows: pd.DataFrame, device: torch.device,
                folder: Path) -> tuple[list[TrainedModel], DataBundle]:
    """The selected runs' final weights in their models, and the data set they were trained on."""
    models = []
    data: dict[tuple[str, str | None], DataBundle] = {}
    for i, (_, row) in enumerate(rows.iterrows()):
        spec, weights = from_run(client, row["run_id"], folder / str(i))
        key = (spec.data.dataset, spec.data.root)
        if key not in data:
            data[key] = load_data(spec.data)
        model = build_model(spec.model, data[key].info).to(device)
        model.load_state_dict(weights)
        model.eval()
        label = f"{row['method']} ({row['run_id'][:6]})"
        models.append(TrainedModel(label, row["run_id"], spec, model))
    datasets = {m.spec.data.dataset for m in models}
    if len(datasets) > 1:
        raise ConfigError(f"--experiment: the models were trained on different data sets {sorted(datasets)}; "
                          "transfer needs one data set")
    return models, next(iter(data.values()))


@torch.no_grad()
def transfer_matrix(models: list[TrainedModel], data: DataBundle, attack: AttackEval, examples: int | None,
                    batch_size: int) -> pd.DataFrame:
    """Accuracy of each model (rows) on the clean test examples and on the examples each model
    (columns) makes adversarial; an example counts when classified correctly."""
    x_all, y_all = data.split("test")
    if examples is not None:
        x_all, y_all = x_all[:examples], y_all[:examples]
    labels = [m.label for m in models]
    correct = pd.DataFrame(0.0, index=labels, columns=["clean", *labels])
    for x, y in eval_batches(x_all, y_all, batch_size):
        for target in models:
            correct.loc[target.label, "clean"] += float((target.model(x).argmax(1) == y).sum())
        for source in models:
            with torch.enable_grad():
                x_adv = attack.run(source.model, x, y, attack.eps[0], None)
            for target in models:
                correct.loc[target.label, source.label] += float((target.model(x_adv).argmax(1) == y).sum())
    return correct / len(y_all)


def plot_matrix(matrix: pd.DataFrame, title: str, path: Path) -> None:
    size = 1.2 + 0.7 * len(matrix.columns)
    fig, ax = plt.subplots(figsize=(size + 1.5, 0.7 * len(matrix) + 2))
    image = ax.imshow(matrix.to_numpy(), vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(matrix.columns)), matrix.columns, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(matrix)), matrix.index, fontsize=8)
    for (i, j), value in pd.DataFrame(matrix.to_numpy()).stack().items():
        ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", fontsize=7,
                color="white" if value < 0.5 else "black")
    ax.set_xlabel("examples made on")
    ax.set_ylabel("evaluated model")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.transfer", description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", action="append", required=True, help="a study's experiment (repeatable)")
    parser.add_argument("--select", choices=SELECTIONS, default="best",
                        help="best: one run per method (highest robust_acc); front; all")
    parser.add_argument("--attack", default="pgd_linf", help=f"one of {ATTACKS.names()}")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, help="PGD steps (default 20)")
    parser.add_argument("--examples", type=int, default=1000, help="first N test examples")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for transfer.csv and transfer.png")
    args = parser.parse_args(argv)
    client = MlflowClient(args.tracking_uri)
    attack = AttackEval(attack=args.attack, eps=[args.eps], steps=args.steps)
    try:
        attack.check("--attack")
        parents = [find_study_run(client, name) for name in args.experiment]
        rows = pd.concat([select_runs(study_trials(client, parent), args.select) for parent in parents])
        if len(rows) < 2:
            raise ConfigError(f"--select {args.select}: {len(rows)} finished run(s) selected; transfer needs two")
        device = resolve_device("auto")
        with tempfile.TemporaryDirectory() as folder:
            models, data = load_models(client, rows, device, Path(folder))
    except (ConfigError, LookupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    matrix = transfer_matrix(models, data.to(device), attack, args.examples, args.batch_size)
    args.out.mkdir(parents=True, exist_ok=True)
    csv, png = args.out / "transfer.csv", args.out / "transfer.png"
    matrix.to_csv(csv, index_label="model")
    title = f"accuracy (%) under transferred {args.attack}, eps = {args.eps:g}"
    plot_matrix(matrix, title, png)
    for parent in parents:
        client.log_artifact(parent, str(csv), "transfer")
        client.log_artifact(parent, str(png), "transfer")
    print(title)
    print((100 * matrix).round(1).to_string())
    print(f"wrote {csv} and {png}; logged to run(s) {', '.join(parents)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
