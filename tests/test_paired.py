"""The paired verdicts (analysis/paired.py) checked against a generator whose truth is known:
accuracy = sigmoid(configuration effect + seed effect + example difficulty + a configuration's
own example effect), each example right or wrong by a coin with that probability. The 95%
intervals must cover the true difference (and the true accuracy) in 93-97% of 1,000 simulated
studies, and judging both configurations on the same examples must narrow the interval."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.paired import BETTER, EQUIVALENT, UNRESOLVED, WORSE, Estimate, Evidence, seed_variance, verdict

EFFECTS = {"A": 0.3, "B": 0.0}  # logits: A is about 6 points ahead
SEED_SD, DIFFICULTY_SD, OWN_SD = 0.1, 1.5, 0.7  # seed sd ~2 points of accuracy


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def true_accuracy(effect: float) -> float:
    """The accuracy expected over seeds and over the population of examples (Monte Carlo, 4M)."""
    rng = np.random.default_rng(12345)
    z = effect + rng.normal(0, SEED_SD, 4_000_000) + rng.normal(0, np.hypot(DIFFICULTY_SD, OWN_SD), 4_000_000)
    return float(sigmoid(z).mean())


def simulated_study(rng: np.random.Generator, seeds: int, examples: int) -> dict[str, np.ndarray]:
    """Each configuration's 0/1 evidence (seeds x examples) on one draw of examples."""
    difficulty = rng.normal(0, DIFFICULTY_SD, examples)
    return {name: (rng.random((seeds, examples)) < sigmoid(
        effect + rng.normal(0, SEED_SD, (seeds, 1)) + difficulty + rng.normal(0, OWN_SD, examples))).astype(float)
        for name, effect in EFFECTS.items()}


def test_intervals_cover_the_truth_in_93_to_97_percent_and_pairing_narrows_them() -> None:
    truth = {name: true_accuracy(effect) for name, effect in EFFECTS.items()}
    rng = np.random.default_rng(0)
    covered = {"difference": 0, "A": 0}
    paired_widths, unpaired_widths = [], []
    studies = 1000
    for i in range(studies):
        study = simulated_study(rng, seeds=3, examples=250)
        evidence = Evidence(study, draws=400, seed=i)
        difference = evidence.compare("A", "B").difference
        covered["difference"] += difference.low <= truth["A"] - truth["B"] <= difference.high
        accuracy = evidence.estimate("A")
        covered["A"] += accuracy.low <= truth["A"] <= accuracy.high
        paired_widths.append(difference.high - difference.low)
        if i < 100:
            unpaired = Evidence(study, draws=400, seed=i, paired=False).compare("A", "B").difference
            unpaired_widths.append(unpaired.high - unpaired.low)
    assert 0.93 <= covered["difference"] / studies <= 0.97, covered
    assert 0.93 <= covered["A"] / studies <= 0.97, covered
    assert np.mean(paired_widths[:100]) < 0.9 * np.mean(unpaired_widths), (np.mean(paired_widths),
                                                                            np.mean(unpaired_widths))


def test_the_seed_variance_leaves_out_the_example_noise() -> None:
    rng = np.random.default_rng(1)
    coins = [(rng.random((6, 2000)) < 0.6).astype(float) for _ in range(200)]  # seeds differ by coin flips only
    naive = np.mean([matrix.mean(1).var(ddof=1) for matrix in coins])
    assert naive == pytest.approx(0.24 / 2000, rel=0.15)
    assert np.mean([seed_variance(matrix) for matrix in coins]) < 0.4 * naive
    shifted = [np.vstack([matrix[:3], (rng.random((3, 2000)) < 0.7)]) for matrix in coins[:100]]
    assert np.mean([seed_variance(matrix) for matrix in shifted]) == pytest.approx(0.05 ** 2 * 6 / 5, rel=0.1)
    assert seed_variance(coins[0][:1]) == 0.0


def test_verdicts_and_p_of_a_clear_win() -> None:
    assert verdict(Estimate(0.02, 0.005, 0.035), delta=0.01) == BETTER
    assert verdict(Estimate(-0.02, -0.035, -0.005), delta=0.01) == WORSE
    assert verdict(Estimate(0.0, -0.008, 0.009), delta=0.01) == EQUIVALENT
    assert verdict(Estimate(0.0, -0.02, 0.02), delta=0.01) == UNRESOLVED
    rng = np.random.default_rng(2)
    strong = (rng.random((3, 2000)) < 0.8).astype(float)
    weak = np.where(rng.random((3, 2000)) < 0.25, 0.0, strong)  # the same examples, a quarter lost
    comparison = Evidence({"strong": strong, "weak": weak}, draws=500).compare("strong", "weak")
    assert comparison.verdict == BETTER and comparison.p_better > 0.999
    assert comparison.describe("robust").startswith("robust +20.")
    assert Evidence({"strong": strong, "weak": weak}, draws=500).compare("weak", "strong").verdict == WORSE
