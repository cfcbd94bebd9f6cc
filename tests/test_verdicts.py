"""The confirmed front's paired verdicts, read from per-example records in a real MLflow store:
who is on the front, whose place is settled (Holm-corrected), the verdict lines; Holm's method
against a hand-worked case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from analysis import compare
from analysis.records import BUDGET_TAG, CONFIG_TAG, METHOD_TAG, PARENT_TAG, STAGE_TAG, STUDY_TAG
from analysis.verdicts import holm, paired_verdicts

EXAMPLES = 1500


def log_records(client: MlflowClient, experiment: str, folder: Path, config: str, seed: int,
                clean: np.ndarray, robust: np.ndarray) -> str:
    run = client.create_run(experiment).info.run_id
    frame = pd.DataFrame({"index": np.arange(EXAMPLES)[::-1], "label": np.zeros(EXAMPLES, dtype=int),
                          "final_clean_acc": pd.array(clean, dtype="boolean"),
                          "final_autoattack_l2_eps1_acc": pd.array(robust & clean, dtype="boolean")})
    path = folder / f"{config}-{seed}" / "examples.parquet"
    path.parent.mkdir()
    frame.to_parquet(path, index=False)
    client.log_artifact(run, str(path), "eval")
    return run


def test_a_dominated_configuration_is_settled_off_and_the_trade_off_on(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("verdicts", artifact_location=(tmp_path / "artifacts").as_uri())
    rng = np.random.default_rng(0)
    easy = rng.random(EXAMPLES)  # an example's ease, shared by every model
    rates = {"robust_one": (0.70, 0.45), "clean_one": (0.85, 0.30), "dominated": (0.60, 0.30),
             "twin": (0.70, 0.45)}  # twin: the robust one again, other seeds
    runs = []
    for config, (clean_rate, robust_rate) in rates.items():
        for seed in range(2):
            clean = (easy < clean_rate) ^ (rng.random(EXAMPLES) < 0.05)  # a few examples flip from seed to seed
            robust = (easy < robust_rate) ^ (rng.random(EXAMPLES) < 0.05)
            runs.append({"run_id": log_records(client, experiment, tmp_path, config, seed, clean, robust),
                         "config_id": config})
    verdicts = paired_verdicts(client, pd.DataFrame(runs), final=True, robust_metric="autoattack_l2_eps1_acc",
                               describe={"robust_one": "pgd_l2 (eps=1)"})
    assert verdicts is not None and verdicts.examples == EXAMPLES
    table = verdicts.table.set_index("config_id")
    assert list(table["seeds"]) == [2, 2, 2, 2]
    assert table.loc["dominated", "on_front"] == False and table.loc["dominated", "settled"] == True  # noqa: E712
    assert table.loc["clean_one", "on_front"] and table.loc["clean_one", "settled"]
    assert not table.loc["robust_one", "settled"] and not table.loc["twin", "settled"], "twins cannot be told apart"
    for config in rates:
        assert table.loc[config, "clean_low"] < table.loc[config, "clean"] < table.loc[config, "clean_high"]
    robust = verdicts.comparisons[("robust_one", "clean_one")]["robust"]
    assert robust.verdict == "better" and robust.p_better > 0.999
    assert robust.difference.mean * 100 > 10
    assert any(line.startswith("pgd_l2 (eps=1) vs clean_one: robust +") for line in verdicts.lines), verdicts.lines


def test_records_missing_fall_back(tmp_path: Path) -> None:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("old", artifact_location=(tmp_path / "artifacts").as_uri())
    runs = pd.DataFrame({"run_id": [client.create_run(experiment).info.run_id], "config_id": ["a"]})
    assert paired_verdicts(client, runs, final=True, robust_metric="autoattack_l2_eps1_acc", describe={}) is None


def test_holm_steps_down_until_a_p_value_is_too_large() -> None:
    # alpha 0.05 over 4, smallest first: 0.001 <= 0.05/4, 0.01 <= 0.05/3, then 0.03 > 0.05/2 stops
    assert holm([0.03, 0.01, 0.001, 0.03], 0.05) == [False, True, True, False]
    assert holm([0.03, 0.01, 0.001, 0.012], 0.05) == [True] * 4, "0.012 <= 0.05/2, then 0.03 <= 0.05/1"
    assert holm([0.04, 0.04], 0.05) == [False, False]
    assert holm([0.02, 0.04], 0.05) == [True, True]


def record_study(client: MlflowClient, tmp_path: Path, name: str, dataset: str,
                 configs: dict[str, tuple[float, float]], easy: np.ndarray) -> None:
    """A study run of experiment `name` (its spec.yaml naming `dataset`) with two finished confirm
    runs per configuration, each with records."""
    experiment = client.create_experiment(name, artifact_location=(tmp_path / name).as_uri())
    parent = client.create_run(experiment, tags={STUDY_TAG: name}).info.run_id
    (tmp_path / name).mkdir()
    spec = tmp_path / name / "spec.txt"
    spec.write_text(f"name: {name}\ndata: {{dataset: {dataset}}}\nfinal_eval: {{split: test}}\n")
    client.log_artifact(parent, str(spec.rename(spec.with_name("spec.yaml"))))
    rng = np.random.default_rng(len(name))
    for config, (clean_rate, robust_rate) in configs.items():
        for seed in range(2):
            clean = (easy < clean_rate) ^ (rng.random(EXAMPLES) < 0.03)
            run = log_records(client, experiment, tmp_path / name, config, seed, clean, easy < robust_rate)
            for key, value in {CONFIG_TAG: config, METHOD_TAG: config, PARENT_TAG: parent, STAGE_TAG: "confirm",
                               BUDGET_TAG: "full"}.items():
                client.set_tag(run, key, value)
            client.log_metric(run, "final_clean_acc", float(clean.mean()))
            client.log_metric(run, "final_autoattack_l2_eps1_acc", float((clean & (easy < robust_rate)).mean()))
            client.log_metric(run, "final_robust_acc", float((clean & (easy < robust_rate)).mean()))
            client.log_metric(run, "compute_time_s", 10.0)
            client.set_terminated(run)
    client.set_terminated(parent)


def test_compare_pairs_studies_that_judged_the_same_examples(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    easy = np.random.default_rng(7).random(EXAMPLES)
    record_study(client, tmp_path, "gradients", "fashion_mnist", {"gp": (0.80, 0.50)}, easy)
    record_study(client, tmp_path, "adversarial", "fashion_mnist", {"pgd": (0.75, 0.40)}, easy)
    record_study(client, tmp_path, "other", "cifar10", {"soc": (0.70, 0.30)}, easy)
    args = ["--tracking-uri", uri, "--robust", "final_autoattack_l2_eps1_acc", "--out", str(tmp_path / "out")]
    assert compare.main([*args, "--experiments", "gradients", "adversarial"]) == 0
    printed = capsys.readouterr().out
    assert "gradients/gp vs adversarial/pgd: robust +10." in printed and "better" in printed, printed
    assert "gradients/gp vs adversarial/pgd" in (tmp_path / "out" / "summary.md").read_text()
    assert compare.main([*args, "--experiments", "gradients", "other"]) == 0
    assert ("paired verdicts: none, the studies judged different examples (data set, split, sample_seed): "
            "gradients: fashion_mnist test seed 0; other: cifar10 test seed 0") in capsys.readouterr().out
