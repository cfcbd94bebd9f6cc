"""The confirmed front's paired verdicts, read from per-example records in a real MLflow store:
who is on the front, whose place is settled (Holm-corrected), the verdict lines; Holm's method
against a hand-worked case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.tracking import MlflowClient

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
            wobble = rng.random(EXAMPLES) < 0.05  # a few examples flip from seed to seed
            clean = (easy < clean_rate) ^ wobble
            robust = easy < robust_rate
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
