"""The next round of a racing confirm stage: where the open questions of the front are, and
whether more examples or more seeds shrink them most per second.

An open question is a pair whose verdict would settle a place on the front and does not yet
(analysis.verdicts): a front configuration against one that might still dominate it, or a
configuration off the front against one that dominates it by the means. Only the
configurations in open pairs race on: their runs get the next block of examples, each from where
its records stop. A difference's variance has an example part (halved by twice the examples) and
a seed part per configuration (v / k, down to v / (k + 1) with one more seed); each action's
expected shrink of the open variance, over its measured cost in seconds, ranks it (after irace /
S-Race, choosing per round what F-race fixes in advance). A round is its best action and, in the
study's other slots beside it, the next best that end within it (a slot left idle is a round's
wall time spent for nothing); it fits what is left of the budget's seconds, its last block of
examples cut to fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from analysis.verdicts import OBJECTIVES, Verdicts, means_dominate, not_dominated_p

MORE_EXAMPLES, MORE_SEEDS = "examples", "seed"


@dataclass(frozen=True)
class Action:
    """One action of a round: evaluate every run of the configurations in open pairs (`target`,
    comma-separated) on `value` examples in all (`examples`), or train configuration `target`'s
    seed number `value` (`seed`); what it is expected to gain (open variance removed), its
    expected seconds, and why."""

    kind: str
    target: str
    value: int
    gain: float
    seconds: float
    reason: str


@dataclass(frozen=True)
class Costs:
    """Measured costs: seconds to train and evaluate one more seed, and seconds to evaluate one
    run on one more example."""

    seconds_per_trial: float
    seconds_per_example: float


def open_pairs(verdicts: Verdicts) -> list[tuple[str, str, str]]:
    """(A, B, objective) per open question: A's place is unsettled and this comparison with B
    would settle it; the objective is the uncertain one nearest a decision (smallest |t|; one
    with no variance left cannot move)."""
    table = verdicts.table.set_index("config_id")
    means = {a: {o: table.loc[a, o] for o in OBJECTIVES} for a in table.index}
    pairs = []
    for a in table.index[~table["settled"]]:
        if table.loc[a, "on_front"]:
            rivals = [b for b in table.index if b != a
                      and not_dominated_p(verdicts.comparisons[(a, b)], verdicts.delta) > 1 - verdicts.confidence]
        else:
            rivals = [b for b in table.index if b != a and means_dominate(means[b], means[a])]
        for b in rivals:
            comparisons = verdicts.comparisons[(a, b)]
            uncertain = [o for o in OBJECTIVES if comparisons[o].error > 0]
            if uncertain:
                pairs.append((a, b, min(uncertain, key=lambda o: abs(comparisons[o].difference.mean)
                                        / comparisons[o].error)))
    return pairs


def plan_round(verdicts: Verdicts, max_seeds: int, max_examples: int, costs: Costs,
               trials_left: int | None = None, seconds_left: float | None = None, slots: int = 1) -> list[Action]:
    """The actions of the next round, best first (none when nothing is open or nothing helps).
    The configurations' seeds and examples so far are the verdicts' table's; only those in an
    open pair race on. With `seconds_left`, the round's actions, shared by `slots` parallel
    slots, fit in it: the block of examples shrinks to what fits (down to a quarter more)."""
    pairs = open_pairs(verdicts)
    if not pairs:
        return []
    table = verdicts.table.set_index("config_id")
    seeds, reach = table["seeds"].astype(int).to_dict(), table["examples"].astype(int).to_dict()
    racing = sorted({c for a, b, _ in pairs for c in (a, b)})
    candidates = []
    runs, measured = sum(seeds[c] for c in racing), sum(seeds[c] * reach[c] for c in racing)
    frontier = max(reach[c] for c in racing)
    affordable = math.inf if seconds_left is None else seconds_left * slots / max(costs.seconds_per_example, 1e-12)
    more = int(min(max_examples, 2 * frontier, (measured + min(affordable, 2 * max_examples * runs)) // runs))
    if more - frontier >= max(1, frontier // 4):
        example_variance = sum(verdicts.evidence[(a, b)][o].variance_components(a, b)[0] * (
            1 - min(reach[a], reach[b]) / more) for a, b, o in pairs)
        seconds = (more * runs - measured) * costs.seconds_per_example
        candidates.append(Action(MORE_EXAMPLES, ",".join(racing), more, example_variance, seconds,
                                 f"{len(pairs)} open pair(s): examples {frontier} -> {more} cut their example "
                                 f"variance by {1 - frontier / more:.0%}"))
    for config in racing:
        k = seeds[config]
        if k >= max_seeds:
            continue
        involved = [(a, b, o) for a, b, o in pairs if config in (a, b)]
        gain = sum(verdicts.evidence[(a, b)][o].seeds[config][0] * (1 / k - 1 / (k + 1)) for a, b, o in involved)
        candidates.append(Action(MORE_SEEDS, config, k + 1, gain, costs.seconds_per_trial,
                                 f"{len(involved)} open pair(s) with {config}: seed {k + 1} of at most {max_seeds}"))
    useful = sorted((c for c in candidates if c.gain > 0), key=lambda c: c.gain / max(c.seconds, 1e-9), reverse=True)
    if not useful:
        return []
    seeds_allowed = trials_left if trials_left is not None else len(useful)
    room = math.inf if seconds_left is None else seconds_left * slots
    length = None  # the round's wall seconds: its best affordable action's, which the others share slots beside
    kept, new_seeds, used = [], 0, 0.0
    for action in useful:
        if action.seconds > room or (action.kind == MORE_SEEDS and new_seeds >= seeds_allowed):
            continue
        length = length or action.seconds
        if used + action.seconds > slots * length:
            continue
        new_seeds += action.kind == MORE_SEEDS
        room -= action.seconds
        used += action.seconds
        kept.append(action)
    return kept
