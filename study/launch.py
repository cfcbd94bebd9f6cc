"""`python -m study.launch SPEC.yaml`: run a study and print its Pareto front.

Validates the spec before anything starts, loads the data once, runs the trials on a local Ray
(or the cluster at --address, or the one `ray job submit` names), records every trial in MLflow,
and prints the front of the trials that ran the full budget. With a `confirm:` section, a
confirm stage then retrains the front's best configurations once per seed and prints the
confirmed front (mean ± 95% interval). `--resume` continues the newest interrupted study of the
same name from its checkpoints, in whichever stage it stopped.
"""

from __future__ import annotations

import argparse
import gc
import os
import socket
import sys
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from study.preflight import check_experiment, check_storage_folder, latest_local_study
from study.spec import StudySpec, load_spec
from trainables.core.registry import ConfigError
from trainables.core.schema import clip, short
from trainables.core.settings import require_fp16_gpu

if TYPE_CHECKING:
    from study.run import Prepared

EXIT_BAD_INPUT = 2


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m study.launch", description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="study YAML, e.g. search_spaces/quickstart.yaml")
    parser.add_argument("--num-samples", type=int, help="override search.num_samples")
    parser.add_argument("--address", help="Ray cluster to attach to (auto or HOST:PORT); default: a local Ray")
    parser.add_argument("--storage", default="runs",
                        help="output folder or URI (s3://...): Tune results, checkpoints, default MLflow database")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite:///STORAGE/mlflow.db)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a spec key, e.g. --set train.epochs=3 (repeatable)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the newest interrupted study of this name under --storage")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved spec and search space, start nothing")
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--confirm-only", action="store_true",
                       help="with --resume: run (or finish) the spec's confirm stage on the study's search front")
    stage.add_argument("--no-confirm", action="store_true", help="skip the spec's confirm stage")
    return parser.parse_args(argv)


def check_stage_arguments(spec: StudySpec, args: argparse.Namespace) -> None:
    if args.confirm_only and not args.resume:
        raise ConfigError("--confirm-only: needs --resume (it confirms the front of an existing study)")
    if args.confirm_only and spec.confirm is None:
        raise ConfigError("--confirm-only: the spec has no confirm section; add one, e.g. confirm: {seeds: [0, 1, 2]}")


def check_local_device(spec: StudySpec, args: argparse.Namespace) -> None:
    """A study run on this machine (no cluster address) can only use its devices: refuse a
    GPU setting without a GPU now rather than in every trial."""
    if args.address or os.environ.get("RAY_ADDRESS"):
        return
    gpus = torch.cuda.device_count()
    spec.resources.require_within(os.cpu_count() or 1, gpus, "the study runs on this machine, which")
    if gpus:
        return
    if spec.train.device == "cuda":
        raise ConfigError("train.device: cuda, but the study runs on this machine, which has no GPU; "
                          "allowed: auto, cpu")
    require_fp16_gpu(spec.train.precision, False, ", and the study runs on this machine, which has none")


STORAGE_SCHEMES = ("file", "s3", "gs", "hdfs", "abfs")  # what pyarrow's filesystems open
TRACKING_SCHEMES = ("file", "sqlite", "http", "https", "postgresql", "mysql", "mssql", "databricks")


def answers(host: str, port: int, option: str, timeout: float = 5.0) -> None:
    """Refuse `option` unless something accepts a TCP connection at host:port within `timeout`."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(f"{option}: nothing answers at {host}:{port} ({err.strerror or err}); "
                          f"start it or correct the address") from err


def check_locations(args: argparse.Namespace) -> None:
    """--storage, --tracking-uri and --address, each checked before anything starts: a known
    scheme, a creatable and writable folder, a server and a cluster that answer. Credentials in
    the tracking URI move to MLflow's environment variables, so the URI that is printed and
    saved with the study holds none."""
    scheme = args.storage.split("://", 1)[0] if "://" in args.storage else ""
    if scheme and scheme not in STORAGE_SCHEMES:
        raise ConfigError(f"--storage: unknown scheme {short(scheme)}; allowed: a folder, "
                          + ", ".join(f"{s}://..." for s in STORAGE_SCHEMES))
    if scheme and scheme != "file" and not args.tracking_uri:
        raise ConfigError(f"--tracking-uri: required when --storage is a URI ({clip(args.storage)}); start an "
                          "MLflow server (see the README's cluster recipe) and pass its http:// address")
    folder = local_storage(args.storage)
    if folder is not None:
        existing = next(p for p in [folder, *folder.parents] if p.exists())
        if not existing.is_dir():
            raise ConfigError(f"--storage: {existing} is a file; allowed: a folder (existing or to be created)")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise ConfigError(f"--storage: {existing} is not writable; allowed: a folder you can write to")
        check_storage_folder(folder)
    if args.tracking_uri:
        parsed = urllib.parse.urlsplit(args.tracking_uri)
        if parsed.scheme and parsed.scheme.split("+")[0] not in TRACKING_SCHEMES:
            raise ConfigError(f"--tracking-uri: unknown scheme {short(parsed.scheme)}; allowed: a folder, "
                              + ", ".join(f"{s}://..." for s in TRACKING_SCHEMES))
        if parsed.username or parsed.password:
            os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parsed.username or "")
            os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parsed.password or "")
            args.tracking_uri = urllib.parse.urlunsplit(parsed._replace(netloc=parsed.netloc.rpartition("@")[2]))
        if parsed.scheme in ("http", "https"):
            answers(parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80), "--tracking-uri")
    if args.address and args.address not in ("auto", "local") and not args.address.startswith("ray://"):
        host, _, port = args.address.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--address: {short(args.address)} is not HOST:PORT; allowed: auto, HOST:PORT")
        answers(host, int(port), "--address")


def local_storage(location: str) -> Path | None:
    """The folder of a local --storage (a path or file://), None for a remote URI."""
    if "://" not in location:
        return Path(location).expanduser().resolve()
    parsed = urllib.parse.urlsplit(location)
    return Path(urllib.parse.unquote(parsed.path)).resolve() if parsed.scheme == "file" else None


def check_study_destination(spec: StudySpec, args: argparse.Namespace) -> None:
    """Before Ray starts: the study to --resume exists under a local --storage (by its exact name),
    and the MLflow experiment it records into is not a deleted one."""
    folder = local_storage(args.storage)
    tracking_uri = args.tracking_uri
    if folder is not None:
        if args.resume:
            tracking_uri = tracking_uri or latest_local_study(folder, spec.name)[1].get("tracking_uri")
        tracking_uri = tracking_uri or f"sqlite:///{folder / 'mlflow.db'}"
    if tracking_uri:
        check_experiment(tracking_uri, spec.experiment)


def resolve_spec(args: argparse.Namespace) -> StudySpec:
    overrides = list(args.overrides)
    if args.num_samples is not None:
        overrides.append(f"search.num_samples={args.num_samples}")
    return load_spec(args.spec, overrides)



def start_and_run(spec: StudySpec, args: argparse.Namespace) -> int:
    """Start Ray and run the validated study. Ray, MLflow and the analysis are imported only now,
    in a thread that also loads the data and, for a local Ray (which refuses nothing the launcher
    has not checked), opens MLflow's and Optuna's stores, while Ray starts: its start is seconds
    of waiting on its processes. On a cluster the stores wait for the cluster's checks, so a
    refused study leaves nothing behind."""
    import ray

    address = args.address or os.environ.get("RAY_ADDRESS")
    gc.disable()  # hundreds of thousands of long-lived objects: collecting while importing them is waste
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            preparing = pool.submit(prepare_in_thread, spec, args, address is None)
            # "local" starts a fresh Ray even where a stale /tmp/ray/ray_current_cluster names a dead one
            ray.init(address=address or "local", include_dashboard=False)
            run, prepared = preparing.result()
    except BaseException:
        ray.shutdown()
        raise
    finally:
        gc.enable()
    gc.freeze()  # the imported objects out of every later collection
    return run.run_study(spec, args, prepared)


def prepare_in_thread(spec: StudySpec, args: argparse.Namespace, open_stores: bool) -> tuple[ModuleType, Prepared]:
    """The heavy imports (the run module: Tune, MLflow, Optuna, the analysis) and the study's
    inputs, for `start_and_run`'s thread."""
    from study import run

    return run, run.prepare(spec, args, open_stores)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_locations(args)
        spec = resolve_spec(args)
        check_stage_arguments(spec, args)
        check_local_device(spec, args)
        for warning in spec.warnings():
            print(warning, file=sys.stderr)
        if args.dry_run:
            from study.space import describe_space

            print("# resolved spec")
            print(spec.to_yaml())
            print("# search space")
            print(describe_space(spec.methods.methods))
            return 0
        check_study_destination(spec, args)
        return start_and_run(spec, args)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    status = main()
    gc.freeze()  # the interpreter's exit then skips collecting the study's objects (seconds)
    sys.exit(status)
