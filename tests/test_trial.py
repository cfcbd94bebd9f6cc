"""The trial contract (`trainables.trial`) and the stage objects (`study.stages`): Tune's config
round-trips, the configuration id is the one recorded before the contract existed, the seed
rule and the overrides apply once; a stage's owed pairs are saved and reloaded by the stage; a
study folder from before the contract is refused with one line naming the version that wrote it."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from study.stages import ConfirmStage, StageInputs, StudyContext
from study.storage import RECORD_FILE, SPEC_FILE, STUDY_FORMAT, Storage, StudyRecord, package_version
from tests.helpers import launch_command, tiny_spec, write_spec
from trainables.core.data import DataConfig
from trainables.core.models import ModelConfig
from trainables.core.registry import ConfigError
from trainables.core.settings import RunSettings, TrainConfig
from trainables.trial import TrialConfig

VARIANT = {"method": "sgr_pgd", "sgr_pgd": {"source": "pgd", "lambda": 0.1, "model.hidden": [16], "train.lr": 0.01},
           "registered_method": "sgr"}


def old_config_id(config: dict) -> str:
    """How tracking computed a configuration's id before the trial contract (sha1 of the Tune
    config without its seed): ids recorded in MLflow by earlier studies must stay the same."""
    text = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


@pytest.mark.parametrize("config", [
    {"method": "clean"},
    {"method": "pgd_l2", "pgd_l2": {"epsilon": 0.969, "steps": 2}},
    {**VARIANT, "seed": 3},
])
def test_tune_configs_round_trip_and_keep_their_recorded_ids(config: dict) -> None:
    trial = TrialConfig.from_tune(config, "search")
    assert trial.to_tune() == config
    assert trial.config_id() == old_config_id(config)
    assert trial.with_seed(7, "confirm").config_id() == trial.config_id(), "one id per configuration, any seed"
    assert trial.with_seed(7, "confirm").to_tune()["seed"] == 7


def test_the_variant_splits_its_hyperparameters_from_its_overrides() -> None:
    trial = TrialConfig.from_tune(VARIANT, "search")
    assert (trial.label, trial.method) == ("sgr_pgd", "sgr")
    assert trial.hparams == {"source": "pgd", "lambda": 0.1}
    assert trial.overrides == {"model.hidden": [16], "train.lr": 0.01}
    assert trial.params() == {"method": "sgr_pgd", "registered_method": "sgr", "hp": VARIANT["sgr_pgd"]}
    assert TrialConfig.from_tune({"method": "clean"}, "search").method == "clean"


def test_run_names_show_the_searched_values_and_the_seed() -> None:
    trial = TrialConfig.from_tune({"method": "pgd_l2", "pgd_l2": {"epsilon": 0.96817, "steps": 2}}, "search")
    assert trial.run_name(["epsilon"]) == "pgd_l2-eps0.968"
    assert trial.with_seed(1, "confirm").run_name(["epsilon"]) == "pgd_l2-eps0.968-seed1"
    variant = TrialConfig.from_tune(VARIANT, "search")
    assert variant.run_name(["lambda", "model.hidden", "train.lr"]) == "sgr_pgd-lam0.1-hidden[16]-lr0.01"


def test_apply_sets_the_overrides_and_the_seed_rule() -> None:
    settings = RunSettings(data=DataConfig("fashion_mnist"), model=ModelConfig("mlp", {"hidden": [32]}),
                           train=TrainConfig(epochs=2, lr=0.05, seed=5))
    trial = TrialConfig.from_tune(VARIANT, "search")
    applied = trial.apply(settings)
    assert applied.model.options == {"hidden": [16]} and applied.train.lr == 0.01
    assert applied.train.seed == 5, "no seed of its own: the study's"
    assert trial.with_seed(2, "confirm").apply(settings).train.seed == 2
    assert trial.seed_or(5) == 5 and trial.with_seed(0, "confirm").seed_or(5) == 0, "seed 0 is a seed"
    assert settings.train.seed == 5 and settings.model.options == {"hidden": [32]}, "the study's settings unchanged"


def test_the_confirm_stage_saves_the_pairs_it_owes_and_reloads_them(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    record = StudyRecord("tiny-20261206-101010", "parent", "sqlite:///x.db", "tiny")
    study = StudyContext(spec=None, storage=storage, record=record, client=None, resources={"cpu": 1})
    inputs = StageInputs(RunSettings(DataConfig("fashion_mnist"), ModelConfig("mlp"), TrainConfig(epochs=1)), None)
    points = [TrialConfig.from_tune(VARIANT, "search").with_seed(seed, "confirm") for seed in (0, 1)]

    class Chosen(ConfirmStage):
        chosen = 0

        def choose(self) -> list[TrialConfig]:
            Chosen.chosen += 1
            return points

    first = Chosen(study, inputs, search=None)
    assert first.points == points and first.owed() == 2
    assert first.folder == record.run_name + "-confirm"
    saved = json.loads((tmp_path / record.run_name / ConfirmStage.FILE).read_text())
    assert saved == [point.to_tune() for point in points]
    again = Chosen(study, inputs, search=None)
    assert again.points == points and Chosen.chosen == 1, "a resumed stage reloads its list, never chooses anew"


def test_a_record_in_another_format_is_refused_naming_its_version(tmp_path: Path) -> None:
    folder = tmp_path / "tiny-20261201-101010"
    folder.mkdir()
    old = {"run_name": folder.name, "parent_run_id": "abc", "tracking_uri": "sqlite:///x.db", "experiment": "tiny"}
    (folder / RECORD_FILE).write_text(json.dumps(old))
    with pytest.raises(ConfigError, match=r"^--resume: tiny-20261201-101010 was written by robust-study 0.1 "
                                          r"\(study format 1\); .* cannot resume it"):
        Storage(str(tmp_path)).latest_record("tiny")
    (folder / RECORD_FILE).write_text(json.dumps({**old, "format": STUDY_FORMAT, "written_by": "robust-study 9"}))
    assert Storage(str(tmp_path)).latest_record("tiny") == StudyRecord(**old, format=STUDY_FORMAT,
                                                                       written_by="robust-study 9")


def test_resuming_a_study_folder_of_the_old_format_exits_2_with_one_line(tiny_fashion_root: Path,
                                                                       tmp_path: Path) -> None:
    """A folder as robust-study 0.1 left it (study.json without a format, spec.yaml, Tune's state
    beside them): one line, exit 2, nothing unpickled, nothing written."""
    spec = write_spec(tmp_path, tiny_spec(tiny_fashion_root))
    folder = tmp_path / "runs" / "tiny-20261201-101010"
    folder.mkdir(parents=True)
    (folder / SPEC_FILE).write_text(spec.read_text())
    (folder / RECORD_FILE).write_text(json.dumps({"run_name": folder.name, "parent_run_id": "0" * 32,
                                                  "tracking_uri": f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}",
                                                  "experiment": "tiny"}))
    (folder / "tuner.pkl").write_bytes(b"\x80\x05 not a pickle this version can read")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    done = subprocess.run(launch_command(spec, "--storage", str(tmp_path / "runs"), "--resume"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    this = f"robust-study {package_version()} (format {STUDY_FORMAT})"
    assert errors == [f"error: --resume: {folder.name} was written by robust-study 0.1 (study format 1); this is "
                      f"{this}, which cannot resume it: finish it with robust-study 0.1, or start the study anew "
                      "(its MLflow records stay readable by the analysis)"]
    assert "Traceback" not in done.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
