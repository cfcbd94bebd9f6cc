"""The study's output location: a local folder or any URI pyarrow's file systems accept
(s3://, gs://, hdfs://), holding one folder per study run and, when local, the default MLflow store."""

from __future__ import annotations

import importlib.metadata
import json
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyarrow.fs
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from study.preflight import RECORD_FILE, is_study_folder
from trainables.core.registry import ConfigError

SPEC_FILE = "spec.yaml"
# What a study folder holds and how (Tune's pickled searchers and callbacks, the stages' files).
# 2: the trial contract (trainables.trial) and the stage objects (study.stages). Folders without
# a format were written by robust-study 0.1.
STUDY_FORMAT = 2


def package_version() -> str:
    try:
        return importlib.metadata.version("robust-study")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


@dataclass
class StudyRecord:
    """What `--resume` needs to find a study's MLflow run again (study.json in its folder), and
    which version of the project wrote the folder."""

    run_name: str
    parent_run_id: str
    tracking_uri: str
    experiment: str
    format: int = STUDY_FORMAT
    written_by: str = field(default_factory=lambda: f"robust-study {package_version()}")


class Storage:
    def __init__(self, location: str) -> None:
        self.uri = location if "://" in location else str(Path(location).expanduser().resolve())
        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)
        self.local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    def study_uri(self, run_name: str) -> str:
        return f"{self.uri.rstrip('/')}/{run_name}"

    def path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def write_text(self, text: str, *parts: str) -> None:
        self.fs.create_dir(self.path(*parts[:-1]), recursive=True)
        with self.fs.open_output_stream(self.path(*parts)) as f:
            f.write(text.encode())

    def read_text(self, *parts: str) -> str:
        with self.fs.open_input_stream(self.path(*parts)) as f:
            return f.readall().decode()

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pyarrow.fs.FileType.NotFound

    def default_tracking_uri(self) -> str:
        if not self.local:
            raise ConfigError(
                f"--tracking-uri: required when --storage is a URI ({self.uri}); start an MLflow "
                "server (see the README's cluster recipe) and pass its http:// address"
            )
        return f"sqlite:///{self.path('mlflow.db')}"

    def write_record(self, record: StudyRecord) -> None:
        self.write_text(json.dumps(asdict(record), indent=2), record.run_name, RECORD_FILE)

    def latest_record(self, name: str) -> StudyRecord:
        """The newest study run named `name` (folders `name-YYYYmmdd-HHMMSS`) that has a record."""
        selector = pyarrow.fs.FileSelector(self.root, allow_not_found=True)
        runs = sorted(
            info.base_name for info in self.fs.get_file_info(selector)
            if info.type == pyarrow.fs.FileType.Directory and is_study_folder(info.base_name, name)
            and self.exists(info.base_name, RECORD_FILE)
        )
        if not runs:
            raise ConfigError(f"--resume: no study named {name!r} under {self.uri} to resume")
        return read_record(self.read_text(runs[-1], RECORD_FILE), runs[-1])


def read_record(text: str, folder: str) -> StudyRecord:
    """A study folder's record; one written in another format is refused, naming the version
    that wrote it (its Tune state would not unpickle, or not mean the same)."""
    saved = json.loads(text)
    written_by = saved.get("written_by", "robust-study 0.1")
    if saved.get("format", 1) != STUDY_FORMAT:
        raise ConfigError(
            f"--resume: {folder} was written by {written_by} (study format {saved.get('format', 1)}); this is "
            f"robust-study {package_version()} (format {STUDY_FORMAT}), which cannot resume it: finish it with "
            f"{written_by}, or start the study anew (its MLflow records stay readable by the analysis)")
    names = {f.name for f in fields(StudyRecord)}
    return StudyRecord(**{k: v for k, v in saved.items() if k in names})


@ray.remote(num_cpus=0)
def path_visible(path: str) -> bool:
    return Path(path).exists()


def check_cluster(storage: Storage, tracking_uri: str) -> None:
    """Refuse, before anything is recorded, a multi-node study whose checkpoints or MLflow store
    the other nodes cannot reach: a SQLite/file tracking URI, or a storage folder not shared."""
    nodes = [node for node in ray.nodes() if node["Alive"]]
    if len(nodes) < 2:
        return
    if tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri:
        raise ConfigError(
            f"--tracking-uri: {tracking_uri} is a local file, and this study runs on {len(nodes)} nodes; "
            "start an MLflow tracking server (mlflow server --backend-store-uri ... --host 0.0.0.0) "
            "and pass --tracking-uri http://HOST:5000"
        )
    if not storage.local:
        return
    probe = Path(storage.root) / f".probe-{uuid.uuid4().hex}"
    probe.parent.mkdir(parents=True, exist_ok=True)
    probe.touch()
    try:
        seen = ray.get([
            path_visible.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False))
            .remote(str(probe))
            for node in nodes
        ])
    finally:
        probe.unlink()
    blind = [node["NodeManagerAddress"] for node, ok in zip(nodes, seen, strict=True) if not ok]
    if blind:
        raise ConfigError(
            f"--storage: {storage.uri} is not shared: node(s) {', '.join(blind)} cannot see it. "
            "Use a folder mounted on every node (NFS) or a URI such as s3://bucket/studies"
        )
