"""A final evaluation of a trained model, logged back to its run.

    python -m study.evaluate --tracking-uri URI --run-id TRIAL_RUN_ID [--eval strong | EVAL.yaml]
    python -m study.evaluate --checkpoint runs/STUDY/TRIAL/checkpoint_000009 --spec runs/STUDY/spec.yaml

By default the kernel_reg reference's (compute_adv.py): full test set; clean accuracy;
untargeted l2 PGD from delta = 0, 100 steps of fixed length 0.5, at eps 0.1, 0.5, 1.0, 1.5;
linf PGD from a uniform random point of the box, 100 sign steps of 0.01, at eps 1, 2, 5, 8 /255
(each adversarial example still re-verified: inside [0, 1], which the reference does not ask).
`--eval strong` runs AutoAttack (standard) and the
minimum-norm attacks at every norm and eps the study's spec evaluates (and the certificate check
for a Lipschitz-bounded model), with a progress bar. `--eval EVAL.yaml` takes any evaluation
instead, written as a spec's `eval:` section. With --run-id the model is the run's final weights
and the settings its study's spec; the results are logged to that run as `final_*` metrics
and its per-example tables as artifacts under `eval/`. `--eval final` runs the study's own
`final_eval` as the study would have (the examples its search attack broke count as broken): for
a trial whose strong evaluation the study skipped as dominated.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from analysis.records import FINAL_EVAL_DONE, FINAL_EVAL_TAG, PARENT_TAG
from analysis.verdicts import run_records
from study.spec import StudySpec, load_spec
from study.storage import SPEC_FILE
from study.tracking import log_latest, log_tables
from trainables.core.data import load_data
from trainables.core.evaluation import (
    AttackEval,
    AutoAttackEval,
    CertificateCheckEval,
    CertifiedEval,
    EvalConfig,
    EvalResult,
    MinNormEval,
    run_evaluation,
)
from trainables.core.models import build_model
from trainables.core.registry import ConfigError
from trainables.core.schema import load_yaml, parse
from trainables.core.settings import resolve_device, same_examples
from trainables.records import known_radii
from trainables.trial import MODEL_FILE

L2_EPS = [0.1, 0.5, 1.0, 1.5]
LINF_EPS = [1 / 255, 2 / 255, 5 / 255, 8 / 255]


def reference_evaluation(examples: int | None, steps: int, batch_size: int) -> EvalConfig:
    return EvalConfig(
        split="test", examples=examples, batch_size=batch_size,
        items=[AttackEval(attack="pgd_l2", eps=L2_EPS, steps=steps, step_size=0.5),
               AttackEval(attack="pgd_linf", eps=LINF_EPS, steps=steps, step_size=0.01, random_start=True)],
    )


def strong_evaluation(spec: StudySpec, examples: int | None, batch_size: int) -> EvalConfig:
    """AutoAttack standard and min_norm at each (norm, eps) the spec's evaluations use; the
    certificate check where the spec measures certified accuracy."""
    radii: dict[str, set[float]] = {}
    configs = [spec.eval] + ([spec.final_eval] if spec.final_eval is not None else [])
    for item in (item for config in configs for item in config.items):
        norm = item.norm if isinstance(item, AttackEval | AutoAttackEval | MinNormEval) else "l2"
        if isinstance(item, AttackEval | AutoAttackEval | MinNormEval | CertifiedEval):
            radii.setdefault(norm, set()).update(item.eps)
    if not radii:
        raise ConfigError("--eval strong: the spec evaluates no robust accuracy at any eps (no attack, autoattack, "
                          "min_norm or certified item) to take norms and radii from")
    items = []
    for norm, eps in sorted(radii.items()):
        attacks = ["fmn", "ddn", "fab"] if norm == "l2" else ["fmn", "fab"]
        items += [AutoAttackEval(norm=norm, eps=sorted(eps), version="standard"),
                  MinNormEval(norm=norm, eps=sorted(eps), attacks=attacks)]
    if any(config.needs_bound for config in configs):
        items.append(CertificateCheckEval(eps=sorted(radii["l2"])))
    return EvalConfig(split="test", examples=examples, batch_size=batch_size, items=items,
                      sample_seed=spec.eval.sample_seed)


def load_evaluation(path: Path, examples: int | None, sample_seed: int = 0) -> EvalConfig:
    """An evaluation written as a spec's `eval:` section (the whole test split unless it or
    --examples says otherwise; in the study's order of examples unless it sets `sample_seed`)."""
    if not path.is_file():
        raise ConfigError(f"--eval: no such file {path}")
    raw = load_yaml(path.read_bytes(), f"--eval {path}") or {}
    raw = raw.get("eval", raw) if isinstance(raw, dict) else raw
    config = parse(EvalConfig, {"examples": None, "sample_seed": sample_seed, **raw}, "eval")
    if examples is not None:
        config.examples = examples
    return config


def evaluate_weights(spec: StudySpec, weights: dict, config: EvalConfig,
                     records: pd.DataFrame | None = None) -> EvalResult:
    """`config` on the weights; where the run's `records` hold the study's search evaluation on
    the same examples, the examples it broke count as broken (as in the study's own final one)."""
    device = resolve_device(spec.train.device)
    data = load_data(spec.data).to(device)
    model = build_model(spec.model, data.info).to(device)
    model.load_state_dict(weights)
    known = None
    if records is not None and same_examples(spec.eval, config):
        known = known_radii(records, spec.eval, len(data.split(config.split)[1]))
    return run_evaluation(model, data, config, progress=True, known=known)


def from_run(client: MlflowClient, run_id: str, folder: Path) -> tuple[StudySpec, dict]:
    """The study spec and final weights of a trial run."""
    run = client.get_run(run_id)
    parent = run.data.tags.get(PARENT_TAG)
    if parent is None:
        raise ConfigError(f"--run-id: {run_id} is not a trial run of a study (no {PARENT_TAG} tag)")
    spec = load_spec(Path(client.download_artifacts(parent, SPEC_FILE, str(folder))))
    weights = torch.load(client.download_artifacts(run_id, f"model/{MODEL_FILE}", str(folder)),
                         map_location="cpu", weights_only=True)
    return spec, weights


def from_checkpoint(checkpoint: Path, spec_path: Path) -> tuple[StudySpec, dict]:
    """A Tune checkpoint folder (or a model.pt / state.pt file) and the spec it was trained under."""
    path = checkpoint / MODEL_FILE if checkpoint.is_dir() else checkpoint
    if not path.is_file():
        raise ConfigError(f"--checkpoint: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return load_spec(spec_path), state.get("model", state)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.evaluate", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-id", help="an MLflow trial run (its results are logged back to it)")
    source.add_argument("--checkpoint", type=Path, help="a trial's checkpoint folder, model.pt or state.pt")
    parser.add_argument("--tracking-uri", help="with --run-id: the study's MLflow tracking URI")
    parser.add_argument("--spec", type=Path, help="with --checkpoint: the study's spec.yaml")
    parser.add_argument("--eval", dest="eval_file",
                        help="`strong` (AutoAttack standard + min_norm at the spec's radii), `final` (the "
                             "study's final_eval) or the YAML of an `eval:` section, instead of the reference "
                             "evaluation")
    parser.add_argument("--examples", type=int, help="first N test examples (default: all)")
    parser.add_argument("--steps", type=int, default=100, help="PGD steps (default 100, as the reference)")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    try:
        if args.run_id:
            if not args.tracking_uri:
                raise ConfigError("--tracking-uri: required with --run-id")
            client = MlflowClient(args.tracking_uri)
            with tempfile.TemporaryDirectory() as folder:
                spec, weights = from_run(client, args.run_id, Path(folder))
        else:
            if args.spec is None:
                raise ConfigError("--spec: required with --checkpoint (the study's spec.yaml)")
            spec, weights = from_checkpoint(args.checkpoint, args.spec)
        if args.eval_file == "strong":
            config = strong_evaluation(spec, args.examples, args.batch_size)
        elif args.eval_file == "final":
            if spec.final_eval is None:
                raise ConfigError("--eval: final: the study's spec has no final_eval; allowed: strong, a YAML file")
            config = spec.final_eval if args.examples is None else replace(spec.final_eval, examples=args.examples)
        elif args.eval_file:
            config = load_evaluation(Path(args.eval_file), args.examples, spec.eval.sample_seed)
        else:
            config = replace(reference_evaluation(args.examples, args.steps, args.batch_size),
                             sample_seed=spec.eval.sample_seed)
    except (ConfigError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    records = None
    if args.run_id:
        with tempfile.TemporaryDirectory() as folder:
            records = run_records(client, args.run_id, folder)
    result = evaluate_weights(spec, weights, config, records if args.eval_file == "final" else None)
    metrics = {f"final_{name}": value for name, value in result.metrics.items()}
    for name, value in metrics.items():
        print(f"{name:40s} {value:.4f}")
    for warning in result.warnings:
        print(f"warning: {warning}")
    if args.run_id:
        log_tables(client, args.run_id, result.final_tables(), records)
        log_latest(client, args.run_id, metrics)
        if args.eval_file == "final":
            client.set_tag(args.run_id, FINAL_EVAL_TAG, FINAL_EVAL_DONE)
        print(f"logged to run {args.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
