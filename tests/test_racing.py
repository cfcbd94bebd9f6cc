"""A race's next round (analysis/racing.py) on records whose variance is known: examples where
the examples are the noise, a seed where the seeds are, nothing once the front is settled, and
the budget's trials respected."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.racing import MORE_EXAMPLES, MORE_SEEDS, Costs, open_pairs, plan_round
from analysis.verdicts import judge

COLUMNS = {"clean": "clean_acc", "robust": "robust_acc"}
COSTS = Costs(seconds_per_trial=60.0, seconds_per_example=0.01)


def records(rng: np.random.Generator, rates: dict[str, tuple[float, float]], seeds: int, examples: int,
            seed_sd: float) -> dict[str, list[pd.DataFrame]]:
    """Per configuration `seeds` runs judged on `examples` shared examples: correct where the
    example's ease is below the configuration's rate, shifted per seed by `seed_sd`."""
    ease = rng.random(examples)
    out = {}
    for name, (clean, robust) in rates.items():
        runs = []
        for _ in range(seeds):
            shift = rng.normal(0, seed_sd)
            runs.append(pd.DataFrame({"index": np.arange(examples), "label": 0,
                                      "clean_acc": pd.array((ease < clean + shift) ^ (rng.random(examples) < 0.1),
                                                            dtype="boolean"),
                                      "robust_acc": pd.array((ease < robust + shift) ^ (rng.random(examples) < 0.1),
                                                             dtype="boolean")}))
        out[name] = runs
    return out


def plan(found: dict[str, list[pd.DataFrame]], examples: int, **limits: object) -> list:
    verdicts = judge(found, COLUMNS, {}, draws=500)
    options = {"max_seeds": 6, "max_examples": 4 * examples, "costs": COSTS} | limits
    return plan_round(verdicts, **options)


def test_close_configurations_with_quiet_seeds_get_more_examples() -> None:
    found = records(np.random.default_rng(0), {"a": (0.80, 0.50), "b": (0.78, 0.52)}, seeds=3, examples=200,
                    seed_sd=0.0)
    actions = plan(found, 200)
    assert actions and actions[0].kind == MORE_EXAMPLES and actions[0].value == 400
    assert "open pair" in actions[0].reason


def test_noisy_seeds_on_many_examples_get_more_seeds() -> None:
    found = records(np.random.default_rng(1), {"a": (0.80, 0.50), "b": (0.78, 0.53)}, seeds=3, examples=4000,
                    seed_sd=0.03)
    actions = plan(found, 4000, costs=Costs(seconds_per_trial=60.0, seconds_per_example=0.05))
    assert actions and actions[0].kind == MORE_SEEDS and actions[0].value == 4
    assert plan(found, 4000, max_seeds=3, max_examples=4000) == [], "no seed and no example left to add"
    assert all(a.kind != MORE_SEEDS for a in plan(found, 4000, trials_left=0)), "the budget's trials are spent"


def test_a_settled_front_plans_nothing() -> None:
    found = records(np.random.default_rng(2), {"a": (0.90, 0.30), "b": (0.60, 0.70), "c": (0.50, 0.20)}, seeds=3,
                    examples=2000, seed_sd=0.0)
    verdicts = judge(found, COLUMNS, {}, draws=500)
    assert verdicts.table["settled"].all()
    assert open_pairs(verdicts) == [] and plan(found, 2000) == []


def test_only_configurations_in_open_pairs_get_examples() -> None:
    found = records(np.random.default_rng(0), {"a": (0.80, 0.50), "b": (0.78, 0.52), "d": (0.99, 0.05)}, seeds=3,
                    examples=200, seed_sd=0.0)
    verdicts = judge(found, COLUMNS, {}, draws=500)
    assert verdicts.table.set_index("config_id").loc["d", "settled"]
    block = plan(found, 200)[0]
    assert block.kind == MORE_EXAMPLES and block.target == "a,b"
    assert block.seconds == (400 - 200) * 6 * COSTS.seconds_per_example, "6 runs of a and b, 200 more examples"


def test_a_round_fits_the_seconds_left() -> None:
    found = records(np.random.default_rng(0), {"a": (0.80, 0.50), "b": (0.78, 0.52)}, seeds=3, examples=200,
                    seed_sd=0.0)
    block = plan(found, 200, seconds_left=3.0, slots=2)[0]
    assert block.kind == MORE_EXAMPLES and block.value == 300, "6 s of slot time buy 100 more examples on 6 runs"
    assert block.seconds <= 6.0
    assert plan(found, 200, seconds_left=0.5) == [], "a block under a quarter more is not worth a round"
