"""The cluster launcher examples are valid Ray cluster configs that install the project, carry
the auth token to every node and start an MLflow server on the head."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "study" / "cluster").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_cluster_config_is_valid_and_sets_up_the_project(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    validate_config(prepare_config(config))
    assert config["file_mounts"]["~/robust-study"] == "."
    assert "~/.ray/auth_token" in config["file_mounts"]
    assert any("pip install" in c and "robust-study" in c for c in config["setup_commands"])
    assert any(c.lstrip().startswith("MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false nohup mlflow server")
               for c in config["head_start_ray_commands"])


def test_both_an_on_premises_and_a_cloud_example_exist() -> None:
    providers = {yaml.safe_load(p.read_text())["provider"]["type"] for p in CONFIGS}
    assert providers == {"local", "aws"}
