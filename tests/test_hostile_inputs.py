"""Hostile specs, arguments and files: every bad value refused with one line naming the key,
before anything starts (no Ray, no MLflow run, no study folder), and a fuzzed quickstart that
ends in a valid spec or a ConfigError, never another exception."""

from __future__ import annotations

import copy
import json
import os
import random
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from study.launch import check_locations, main, parse_args
from study.spec import load_spec
from study.storage import RECORD_FILE, Storage
from tests.helpers import launch_command, mlflow_server, study_runs, tiny_spec, write_spec
from trainables.core.registry import ConfigError

QUICKSTART = Path(__file__).resolve().parents[1] / "search_spaces" / "quickstart.yaml"


def refused(tmp_path: Path, text: str | bytes, match: str) -> None:
    path = tmp_path / "hostile.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(ConfigError, match=match):
        load_spec(path)


def quickstart_with(**changes: str) -> str:
    """The quickstart's text with `old=new` line replacements (keeps its comments and order)."""
    text = QUICKSTART.read_text()
    for old, new in changes.items():
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


@pytest.mark.parametrize(("spec", "message"), [
    ({"train": {"lr": float("inf")}}, r"^train.lr: expected a finite number, got inf$"),
    ({"methods": {"pgd_l2": {"epsilon": float("nan")}}}, r"^methods.pgd_l2.epsilon: expected a finite float, got nan$"),
    ({"eval": {"items": [{"kind": "attack", "eps": [float("inf")]}]}}, r"^eval.items\[0\].eps\[0\]: expected a finite"),
    ({"data": {"seed": 99999999999}}, r"^data.seed: must be in 0 .. 2\^32 - 43"),
    ({"search": {"seed": -1}}, r"^search.seed: must be in 0 .. 2\^32 - 1, got -1$"),
    ({"train": {"batch_size": 1e20}}, r"^train.batch_size: expected an integer, got 1e\+20$"),
    ({"train": {"batch_size": 10 ** 30}}, r"^train.batch_size: 1000000000000000000000000000000 does not fit in 64"),
    ({"train": {"seed": 2 ** 32}}, r"^train.seed: must be in 0 .. 2\^32 - 1"),
    ({"search": {"first": [{"method": "pgd_l2", "epsilon": 99.0}]}},
     r"^search.first\[0\].epsilon: 99.0 is outside the searched range; allowed: 0.2 .. 2.0$"),
])
def test_out_of_range_and_non_finite_values_are_refused(tiny_fashion_root: Path, tmp_path: Path, spec: dict,
                                                        message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_spec(write_spec(tmp_path, tiny_spec(tiny_fashion_root, **spec)))


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path: Path) -> None:
    refused(tmp_path, quickstart_with(**{"\ntrain:": "\ntrain: {epochs: 1}\ntrain:"}),
            r"^train: given twice \(lines \d+ and \d+\); give each key once$")
    refused(tmp_path, "name: a\nmethods:\n  pgd_l2: {epsilon: 0.5, epsilon: 0.7}\n",
            r"^epsilon: given twice \(lines 3 and 3\)")


def test_an_alias_bomb_is_refused_quickly_and_never_printed(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "\n".join([*lines, "name: bomb", "data: {dataset: fashion_mnist, subset: *a8}", ""])
    (tmp_path / "bomb.yaml").write_text(bomb)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_spec(tmp_path / "bomb.yaml")
    assert time.perf_counter() - started < 5
    assert "expands to more than 100000 values" in str(caught.value) and len(str(caught.value)) < 300


def test_a_spec_that_is_not_utf8_names_the_byte(tmp_path: Path) -> None:
    latin1 = "# étude\nname: x\n".encode("latin-1")
    refused(tmp_path, latin1, r"not UTF-8 \(byte 2 is b'\\xe9'\); save the file as UTF-8$")


@pytest.mark.parametrize(("arguments", "message"), [
    (["--set", "train.epochs=[1,"], r"^--set train.epochs: not valid YAML"),
    (["--set", "train..epochs=3"], r"^--set train..epochs: an empty part in the dotted key"),
    (["--storage", "bogus://x"], r"^--storage: unknown scheme 'bogus'; allowed: a folder, file://"),
    (["--storage", "s3://bucket/studies"], r"^--tracking-uri: required when --storage is a URI"),
    (["--tracking-uri", "bogus://x"], r"^--tracking-uri: unknown scheme 'bogus'"),
    (["--tracking-uri", "http://127.0.0.1:9"], r"^--tracking-uri: nothing answers at 127.0.0.1:9"),
    (["--address", "127.0.0.1:9"], r"^--address: nothing answers at 127.0.0.1:9"),
    (["--address", "nonsense"], r"^--address: 'nonsense' is not HOST:PORT"),
    (["--set", "resources.cpu=1000000"], r"^resources.cpu: 1000000.0 per trial, but the study runs on this machine"),
])
def test_bad_arguments_exit_2_with_one_line_and_leave_nothing(
    tiny_fashion_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture, arguments: list[str], message: str
) -> None:
    spec = write_spec(tmp_path, tiny_spec(tiny_fashion_root))
    storage = tmp_path / "runs"
    arguments = arguments if "--storage" in arguments else [*arguments, "--storage", str(storage)]
    assert main([str(spec), *arguments]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and error.startswith("error: ")
    assert re.search(message, error.removeprefix("error: ").strip()), error
    assert not storage.exists()


def test_storage_that_is_a_file_or_not_writable_is_named(tmp_path: Path) -> None:
    regular = tmp_path / "file"
    regular.write_text("")
    with pytest.raises(ConfigError, match=f"^--storage: {regular} is a file"):
        check_locations(parse_args(["spec.yaml", "--storage", str(regular / "runs")]))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if not os.access(locked, os.W_OK):  # root writes anywhere
        with pytest.raises(ConfigError, match=f"^--storage: {locked} is not writable"):
            check_locations(parse_args(["spec.yaml", "--storage", str(locked / "runs")]))


def test_credentials_leave_the_tracking_uri_for_mlflows_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
        args = parse_args(["spec.yaml", "--tracking-uri", f"http://alice:s%40cret@127.0.0.1:{port}/prefix"])
        check_locations(args)
    assert args.tracking_uri == f"http://127.0.0.1:{port}/prefix"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("alice", "s@cret")


def test_resume_matches_the_study_name_exactly(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    folder = tmp_path / "qs-x-20261201-101010"
    folder.mkdir()
    (folder / RECORD_FILE).write_text(json.dumps({}))
    with pytest.raises(ConfigError, match="--resume: no study named 'qs'"):
        storage.latest_record("qs")


def test_a_hostile_launch_exits_2_within_10_seconds(tiny_fashion_root: Path, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, tiny_spec(tiny_fashion_root, train={"lr": float("inf")}))
    started = time.perf_counter()
    done = subprocess.run(launch_command(spec, "--storage", str(tmp_path / "runs")), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert time.perf_counter() - started < 10
    expected = "error: train.lr: expected a finite number, got inf\n"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", expected)
    assert not (tmp_path / "runs").exists()


def mutations(spec: dict, rng: random.Random) -> dict:
    """One random hostile change: a deleted key, a swapped type, an out-of-range or non-finite
    number, or a duplicated section (as YAML text, see below)."""
    mutated = copy.deepcopy(spec)
    paths = []

    def walk(node: object, path: tuple) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                paths.append((*path, key))
                walk(value, (*path, key))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                paths.append((*path, i))
                walk(value, (*path, i))

    walk(mutated, ())
    path = rng.choice(paths)
    parent = mutated
    for part in path[:-1]:
        parent = parent[part]
    choice = rng.choice(["delete", "swap", "huge", "negative", "nan", "inf", "string", "list", "zero"])
    if choice == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    else:
        parent[path[-1]] = {"swap": {"x": 1}, "huge": 10 ** 40, "negative": -7, "nan": float("nan"),
                            "inf": float("-inf"), "string": "\u202e\x00bad", "list": [[]], "zero": 0,
                            "delete": None}[choice]
    return mutated


def test_a_fuzzed_quickstart_is_valid_or_refused_in_one_line(tmp_path: Path) -> None:
    rng = random.Random(17)
    base = yaml.safe_load(QUICKSTART.read_text())
    outcomes = {"valid": 0, "refused": 0}
    for i in range(300):
        text = yaml.safe_dump(mutations(base, rng), allow_unicode=True)
        if i % 10 == 0:  # a duplicated top-level key
            text += f"\n{rng.choice(list(base))}: {{}}\n"
        path = tmp_path / f"fuzz{i}.yaml"
        path.write_text(text)
        started = time.perf_counter()
        try:
            load_spec(path)
            outcomes["valid"] += 1
        except ConfigError as err:
            assert "\n" not in str(err).strip() and len(str(err)) < 1000, str(err)
            outcomes["refused"] += 1
        assert time.perf_counter() - started < 5, f"mutation {i} took too long"
    assert outcomes["refused"] > 150 and outcomes["valid"] > 10, outcomes


def test_the_single_run_command_refuses_a_bad_model_option_before_reading_data(tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture) -> None:
    from trainables.core.train import main as train_main

    run = {"data": {"dataset": "fashion_mnist", "root": str(tmp_path / "absent")},
           "model": {"name": "lipconvnet", "depth": 5, "activation": "relu"}, "train": {"epochs": 1},
           "eval": {"items": [{"kind": "certified", "eps": [0.1]}]}, "method": {"name": "lipschitz"}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    assert train_main([str(path)]) == 2
    assert capsys.readouterr().err == "error: model.activation: 'relu' is not allowed; allowed: maxmin, hh1, hh2\n"


def snapshot(folder: Path) -> dict[str, int]:
    """Every path under `folder` with its size (a file's) or -1 (a folder's)."""
    return {str(p.relative_to(folder)): p.stat().st_size if p.is_file() else -1 for p in folder.rglob("*")}


def deleted_experiment_store(storage: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    client.delete_experiment(client.create_experiment("tiny"))


def earlier_study_of_a_longer_name(storage: Path) -> None:
    folder = storage / "tiny-extra-20261201-101010"
    folder.mkdir()
    (folder / RECORD_FILE).write_text(json.dumps({"run_name": folder.name, "parent_run_id": "0" * 32,
                                                  "tracking_uri": "sqlite:///x.db", "experiment": "tiny-extra"}))


@pytest.mark.parametrize(("case", "sections", "arguments", "setup", "message"), [
    ("subset", {"data": {"subset": 100_000, "val": 100}}, [], None,
     "error: data.subset: 100000 training + 100 validation examples do not fit in the 60000 training examples "
     "of fashion_mnist; allowed: subset + val <= 60000"),
    ("val", {"data": {"subset": None, "val": 60_000}}, [], None,
     "error: data.val: 60000 validation examples leave none of the 60000 training examples of fashion_mnist "
     "to train on; allowed: val < 60000"),
    ("max_examples", {"confirm": {"seeds": [0, 1], "max_examples": 20_000}}, [], None,
     "error: confirm.max_examples: 20000, but the test split holds 10000 examples; allowed: at most 10000"),
    ("storage", {}, ["--storage", "/proc/robust-study/runs"], None,
     "error: --storage: cannot create /proc/robust-study/runs (No such file or directory); "
     "allowed: a folder you can create and write to"),
    ("resume", {}, ["--resume"], None, "error: --resume: no study named 'tiny' under STORAGE to resume"),
    ("resume by a prefix", {}, ["--resume"], earlier_study_of_a_longer_name,
     "error: --resume: no study named 'tiny' under STORAGE to resume"),
    ("deleted experiment", {}, [], deleted_experiment_store,
     "error: tracking.experiment: 'tiny' exists in MLflow but is deleted; restore it (mlflow experiments restore "
     "--experiment-id 1) or name another"),
])
def test_refused_before_ray_starts_and_nothing_left(tiny_fashion_root: Path, tmp_path: Path, case: str,
                                                    sections: dict, arguments: list[str], setup: object,
                                                    message: str) -> None:
    """Each refusal that needs the data set's size, the storage folder, the study to resume or the
    MLflow experiment's state: exit 2 and one line, no Ray session (RAY_TMPDIR stays empty), and
    nothing written under the storage folder."""
    storage, ray_tmp = tmp_path / "runs", tmp_path / "ray"
    storage.mkdir()
    ray_tmp.mkdir()
    if setup is not None:
        setup(storage)
    before = snapshot(storage)
    spec = tiny_spec(tiny_fashion_root, **sections)
    spec["data"] = {k: v for k, v in spec["data"].items() if v is not None}
    if "confirm" in sections:
        spec["objectives"] = [{"metric": "clean_acc", "mode": "max"}, {"metric": "robust_acc", "mode": "max"}]
    path = write_spec(tmp_path, spec)
    arguments = arguments if "--storage" in arguments else [*arguments, "--storage", str(storage)]
    done = subprocess.run(launch_command(path, *arguments), cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "RAY_TMPDIR": str(ray_tmp)})
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message.replace("STORAGE", str(storage)) + "\n")
    assert list(ray_tmp.iterdir()) == [], "Ray started"
    assert snapshot(storage) == before


@pytest.mark.integration
def test_credentials_in_the_tracking_uri_are_never_printed_nor_saved(tiny_fashion_root: Path, tmp_path: Path) -> None:
    with mlflow_server(tmp_path, app="basic-auth") as uri:
        with pytest.raises(urllib.error.HTTPError, match="401"):  # the server does ask for credentials
            urllib.request.urlopen(f"{uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=5)
        spec = write_spec(tmp_path, tiny_spec(tiny_fashion_root, name="secret", train={"epochs": 1},
                                              methods={"clean": {}}, scheduler={"kind": "fifo"},
                                              search={"num_samples": 1, "max_concurrent": 1, "seed": 0}))
        secret_uri = uri.replace("http://", "http://admin:s3cret-Tr4cking-pw@")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_")}
        done = subprocess.run(launch_command(spec, "--storage", str(tmp_path / "runs"), "--tracking-uri", secret_uri),
                              cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"at {uri}" in done.stdout and "s3cret-Tr4cking-pw" not in done.stdout + done.stderr
        saved = [path for path in (tmp_path / "runs").rglob("*") if path.is_file()]
        assert saved and not [path for path in saved if b"s3cret-Tr4cking-pw" in path.read_bytes()]
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD="s3cret-Tr4cking-pw")
        try:
            parents, trials = study_runs(MlflowClient(uri), "secret")
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
        assert (len(parents), len(trials)) == (1, 1)
