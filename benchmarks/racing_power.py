"""Racing against today's fixed confirmation, at equal compute, on simulated studies.

    python benchmarks/racing_power.py --tracking-uri sqlite:///runs/mlflow.db --experiment quickstart
    python benchmarks/racing_power.py --studies 500 --configs 4        # the built-in variance model

A variance model is fitted to a real study's confirm records where one is named (per objective:
the configurations' accuracies, the seed-to-seed variance, and how often two configurations and
two seeds of one configuration disagree on an example), else a built-in one (printed). Each
simulated study draws K configurations from it, on a population of examples whose difficulty all
share: accuracy = sigmoid(configuration + seed + example + the configuration's own example
effect), each example right or wrong by a coin.

- Today's stage: 3 seeds per configuration on the first N examples and each configuration's
  Student-t interval over seeds, as the front table printed them; a pair is decided where the two
  intervals do not overlap (how docs/results.md read them: "intervals overlap, inconclusive").
  A second row decides where the difference's Welch interval excludes 0: a test today's stage
  never ran, shown as the stronger fixed baseline.
- The race: 2 seeds on N examples, then rounds planned by analysis.racing and judged by
  analysis.verdicts, until the front is settled or it has spent what today's stage spends
  (seconds of training and evaluation: a seed costs a training and an evaluation of N examples, a
  block of examples its evaluation on every racing run).

Per pair and objective, a decision is correct where its direction (or equivalence within delta)
matches the truth, wrong where it does not, unresolved otherwise. Printed as a table.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from arguments import parse_checked  # noqa: E402  (benchmarks/arguments.py)

from analysis.racing import MORE_EXAMPLES, MORE_SEEDS, Costs, plan_round  # noqa: E402
from analysis.records import CONFIRM  # noqa: E402
from analysis.verdicts import OBJECTIVES, confirm_records, judge, record_columns  # noqa: E402

DELTA, CONFIDENCE, DRAWS = 0.01, 0.95, 400


@dataclass(frozen=True)
class ObjectiveModel:
    """One objective's generator: per configuration a logit effect, and the spreads of seeds,
    example difficulty and a configuration's own example effect (logit scale)."""

    effects: tuple[float, ...]
    seed_sd: float
    difficulty_sd: float
    own_sd: float


BUILT_IN = {"clean": ObjectiveModel((1.2, 1.1, 1.3, 0.9), 0.05, 2.0, 0.6),
            "robust": ObjectiveModel((0.2, 0.15, -0.1, 0.25), 0.08, 1.8, 0.8)}


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def truth(model: ObjectiveModel, effect: float) -> float:
    """Accuracy over seeds and the population of examples (Monte Carlo)."""
    rng = np.random.default_rng(99)
    spread = math.sqrt(model.seed_sd ** 2 + model.difficulty_sd ** 2 + model.own_sd ** 2)
    return float(sigmoid(effect + rng.normal(0, spread, 1_000_000)).mean())


class World:
    """One simulated study: K configurations, a pool of examples, and seeds drawn on demand."""

    def __init__(self, models: dict[str, ObjectiveModel], rng: np.random.Generator, pool: int) -> None:
        self.models, self.rng = models, rng
        self.difficulty = {o: rng.normal(0, m.difficulty_sd, pool) for o, m in models.items()}
        self.own = {o: {c: rng.normal(0, m.own_sd, pool) for c in range(len(m.effects))} for o, m in models.items()}

    def seed(self, config: int, examples: int) -> dict[str, np.ndarray]:
        """One new seed of `config`: per objective, 0/1 on the first `examples` of the pool."""
        out = {}
        for o, m in self.models.items():
            z = m.effects[config] + self.rng.normal(0, m.seed_sd) + self.difficulty[o] + self.own[o][config]
            out[o] = self.rng.random(len(z)) < sigmoid(z)
        return {o: v[:examples] for o, v in out.items()} | {"_full": out}


def fixed_decisions(runs: dict[int, list[dict]], examples: int, rule: str) -> dict[tuple[int, int, str], str]:
    """Today's stage, 95%: `apart` reads a pair as decided where the two configurations' Student-t
    intervals over seeds do not overlap (how today's front table is read), `welch` where the
    difference's Welch interval excludes 0."""
    decisions = {}
    for a in runs:
        for b in runs:
            if a >= b:
                continue
            for o in OBJECTIVES:
                xa = np.array([r["_full"][o][:examples].mean() for r in runs[a]])
                xb = np.array([r["_full"][o][:examples].mean() for r in runs[b]])
                if rule == "apart":
                    (ma, ha), (mb, hb) = student_t(xa), student_t(xb)
                    low, high = (ma - ha) - (mb + hb), (ma + ha) - (mb - hb)
                else:
                    with warnings.catch_warnings():  # seeds that agree exactly: scipy warns, the interval is 0
                        warnings.simplefilter("ignore", RuntimeWarning)
                        test = stats.ttest_ind(xa, xb, equal_var=False)
                    low, high = test.confidence_interval(CONFIDENCE)
                decisions[(a, b, o)] = "better" if low > 0 else "worse" if high < 0 else "unresolved"
    return decisions


def student_t(values: np.ndarray) -> tuple[float, float]:
    """(mean, half-width) of the 95% Student-t interval over seeds, as today's front table prints it."""
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    return float(values.mean()), float(half)


def records_of(runs: dict[int, list[dict]], examples: dict[int, int]) -> dict[str, list[pd.DataFrame]]:
    """The simulated runs as the records analysis.verdicts reads (examples per configuration)."""
    return {str(c): [pd.DataFrame({"index": np.arange(examples[c]), "label": 0,
                                   **{o: pd.array(r["_full"][o][:examples[c]], dtype="boolean") for o in OBJECTIVES}})
                     for r in seeds] for c, seeds in runs.items()}


def race_decisions(world: World, configs: int, examples: int, budget: float, trial_s: float, example_s: float,
                   max_examples: int, max_seeds: int) -> tuple[dict[tuple[int, int, str], str], float]:
    """The racing stage on `world` until settled or `budget` seconds are spent."""
    runs = {c: [world.seed(c, examples) for _ in range(2)] for c in range(configs)}
    reach = {c: examples for c in range(configs)}
    spent = 2 * configs * trial_s
    columns = {o: o for o in OBJECTIVES}
    while True:
        verdicts = judge(records_of(runs, reach), columns, {}, CONFIDENCE, DELTA, DRAWS)
        actions = plan_round(verdicts, max_seeds, max_examples, Costs(trial_s, example_s), seconds_left=budget - spent)
        if not actions:
            break
        spent += sum(a.seconds for a in actions)
        for action in actions:
            if action.kind == MORE_EXAMPLES:
                reach.update({int(c): action.value for c in action.target.split(",")})
            elif action.kind == MORE_SEEDS:
                runs[int(action.target)].append(world.seed(int(action.target), reach[int(action.target)]))
    decisions = {(int(a), int(b), o): c[o].verdict for (a, b), c in verdicts.comparisons.items()
                 if int(a) < int(b) for o in OBJECTIVES}
    return decisions, spent


def score(decisions: dict[tuple[int, int, str], str], truths: dict[str, list[float]]) -> dict[str, int]:
    counts = {"correct": 0, "wrong": 0, "unresolved": 0}
    for (a, b, o), verdict in decisions.items():
        diff = truths[o][a] - truths[o][b]
        right = "better" if diff > 0 else "worse"
        if verdict == "unresolved":
            counts["unresolved"] += 1
        elif verdict == right or (verdict == "equivalent" and abs(diff) < DELTA):
            counts["correct"] += 1
        else:
            counts["wrong"] += 1
    return counts


def fit(tracking_uri: str, experiment: str) -> dict[str, ObjectiveModel]:
    """Per objective, a model matched to a real study's confirm records: the configurations'
    accuracies, their seed variance, and the share of examples two configurations (and two seeds
    of one configuration) disagree on, by a coarse grid over the example spreads."""
    from mlflow.tracking import MlflowClient

    from analysis.paired import seed_variance
    from analysis.pareto import completed, study_trials
    from analysis.records import find_study_run

    client = MlflowClient(tracking_uri)
    parent = client.get_run(find_study_run(client, experiment))
    trials = study_trials(client, parent.info.run_id)
    trials = completed(trials[trials["stage"] == CONFIRM])
    final = trials["metrics.final_robust_acc"].notna().all() if "metrics.final_robust_acc" in trials else False
    tags = parent.data.tags
    robust = tags.get("robust_study.confirm_robust_metric") or tags["robust_study.robust_metric"]
    columns = record_columns(final, robust)
    records = confirm_records(client, trials, columns)
    models = {}
    for objective, column in columns.items():
        matrices = {c: np.stack([f.sort_values("index")[column].dropna().astype(float).to_numpy()[:min(
            int(g[column].notna().sum()) for g in frames)] for f in frames]) for c, frames in records.items()}
        accuracy = {c: m.mean() for c, m in matrices.items()}
        slope = np.mean([a * (1 - a) for a in accuracy.values()])
        seed_sd = math.sqrt(np.mean([seed_variance(m) for m in matrices.values()])) / max(slope, 1e-3)
        within = np.mean([np.mean(m[0] != m[1]) for m in matrices.values() if len(m) > 1])
        names = list(matrices)
        between = np.mean([np.mean(matrices[a][0] != matrices[b][0]) for i, a in enumerate(names)
                           for b in names[i + 1:]]) if len(names) > 1 else within
        best, error = None, math.inf
        for difficulty_sd in np.arange(0.5, 6.01, 0.25):
            for own_sd in np.arange(0.0, 2.01, 0.25):
                simulated = ObjectiveModel(tuple(0.0 for _ in names), seed_sd, difficulty_sd, own_sd)
                d_within, d_between = disagreement(simulated, np.mean(list(accuracy.values())))
                gap = (d_within - within) ** 2 + (d_between - between) ** 2
                if gap < error:
                    best, error = (difficulty_sd, own_sd), gap
        spread = math.sqrt(seed_sd ** 2 + best[0] ** 2 + best[1] ** 2)
        effects = tuple(float(effect_for(a, spread)) for a in accuracy.values())
        models[objective] = ObjectiveModel(effects, seed_sd, *best)
    return models


def effect_for(accuracy: float, spread: float) -> float:
    """The logit effect whose mean accuracy over a normal spread is `accuracy` (bisection)."""
    z = np.random.default_rng(5).normal(0, spread, 200_000)
    low, high = -10.0, 10.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if sigmoid(middle + z).mean() < accuracy else (low, middle)
    return (low + high) / 2


def disagreement(model: ObjectiveModel, accuracy: float) -> tuple[float, float]:
    """Shares of examples on which two seeds of one configuration, and two configurations of the
    same accuracy, disagree under `model`."""
    rng = np.random.default_rng(3)
    spread = math.sqrt(model.seed_sd ** 2 + model.difficulty_sd ** 2 + model.own_sd ** 2)
    effect = effect_for(accuracy, spread)
    d, g1, g2 = (rng.normal(0, s, 20_000) for s in (model.difficulty_sd, model.own_sd, model.own_sd))
    p1 = sigmoid(effect + d + g1 + rng.normal(0, model.seed_sd))
    p1b = sigmoid(effect + d + g1 + rng.normal(0, model.seed_sd))
    p2 = sigmoid(effect + d + g2 + rng.normal(0, model.seed_sd))
    return float(np.mean(p1 * (1 - p1b) + p1b * (1 - p1))), float(np.mean(p1 * (1 - p2) + p2 * (1 - p1)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri")
    parser.add_argument("--experiment")
    parser.add_argument("--studies", type=int, default=500)
    parser.add_argument("--configs", type=int, default=4)
    parser.add_argument("--examples", type=int, default=250, help="the first round's examples (today's all)")
    parser.add_argument("--max-examples", type=int, default=2000)
    parser.add_argument("--max-seeds", type=int, default=6)
    parser.add_argument("--trial-seconds", type=float, default=60.0, help="a seed: training and evaluation")
    parser.add_argument("--example-seconds", type=float, default=0.05, help="one run on one example")
    args = parse_checked(parser, argv, positive=("studies", "configs", "examples", "max_examples", "max_seeds",
                                                 "trial_seconds", "example_seconds"))
    if args.configs < 2:
        print(f"error: --configs: a race needs at least 2, got {args.configs}; allowed: 2 or more", file=sys.stderr)
        return 2
    if args.max_examples < args.examples:
        print(f"error: --max-examples: {args.max_examples} is below --examples {args.examples}; "
              "allowed: at least --examples", file=sys.stderr)
        return 2
    if args.tracking_uri and args.experiment:
        models, source = fit(args.tracking_uri, args.experiment), f"fitted to {args.experiment}'s confirm records"
    else:
        models, source = BUILT_IN, "the built-in model"
    print(f"variance model ({source}):")
    for objective, model in models.items():
        print(f"  {objective}: effects {[round(e, 2) for e in model.effects]}, seed sd {model.seed_sd:.3f}, "
              f"example sd {model.difficulty_sd:.2f}, own example sd {model.own_sd:.2f} (logits)")
    budget = 3 * args.configs * args.trial_seconds
    stages = ("today, intervals apart", "today, Welch", "race")
    totals = {name: {"correct": 0, "wrong": 0, "unresolved": 0} for name in stages}
    spent, started = [], time.perf_counter()
    for number in range(args.studies):  # each study its own streams: both stages see the same configurations
        rng = np.random.default_rng([0, number])
        chosen = {o: tuple(rng.choice(m.effects, args.configs) + rng.normal(0, 0.05, args.configs))
                  for o, m in models.items()}
        study = {o: ObjectiveModel(chosen[o], m.seed_sd, m.difficulty_sd, m.own_sd) for o, m in models.items()}
        truths = {o: [truth(m, e) for e in m.effects] for o, m in study.items()}
        world = World(study, rng, args.max_examples)
        fixed = {c: [world.seed(c, args.examples) for _ in range(3)] for c in range(args.configs)}
        for name, rule in zip(stages[:2], ("apart", "welch"), strict=True):
            for key, value in score(fixed_decisions(fixed, args.examples, rule), truths).items():
                totals[name][key] += value
        world = World(study, np.random.default_rng([1, number]), args.max_examples)
        decisions, cost = race_decisions(world, args.configs, args.examples, budget, args.trial_seconds,
                                         args.example_seconds, args.max_examples, args.max_seeds)
        spent.append(cost / budget)
        for key, value in score(decisions, truths).items():
            totals["race"][key] += value
    pairs = args.studies * args.configs * (args.configs - 1) // 2 * len(OBJECTIVES)
    print(f"\n{args.studies} studies x {args.configs} configurations ({pairs} pairwise decisions), "
          f"{time.perf_counter() - started:.0f} s; compute: today 3 seeds x {args.examples} examples, "
          f"the race at most the same (it spent {np.mean(spent):.0%} of it on average)\n")
    print("| stage | correct | wrong | unresolved |")
    print("|---|---|---|---|")
    for name, counts in totals.items():
        shares = " | ".join(f"{counts[k] / pairs:.1%}" for k in ("correct", "wrong", "unresolved"))
        print(f"| {name} | {shares} |")
    ratios = ", ".join(f"{totals['race']['correct'] / max(totals[name]['correct'], 1):.2f}x against {name}"
                       for name in stages[:2])
    print(f"\ncorrect resolutions, race / today: {ratios} (target >= 2); race wrong: "
          f"{totals['race']['wrong'] / pairs:.1%} (target <= 5%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
