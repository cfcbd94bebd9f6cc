"""What each trial is doing right now, for the study's progress table: a small named Ray actor
that trials tell (`training`, `evaluating: autoattack_l2, 250/500 points left`) and the
driver reads, and a progress line on the trial's console for a long evaluation."""

from __future__ import annotations

import time
from collections.abc import Callable

import ray

BOARD = "robust_study_phases"
PRINT_EVERY_S = 30.0  # an evaluation's progress line, at most this often


@ray.remote(num_cpus=0)
class PhaseBoard:
    """Each trial's latest phase, by trial id."""

    def __init__(self) -> None:
        self.phases: dict[str, str] = {}

    def tell(self, trial_id: str, phase: str) -> None:
        self.phases[trial_id] = phase

    def read(self) -> dict[str, str]:
        return dict(self.phases)


def open_board() -> ray.actor.ActorHandle:
    """The driver's board (made once per Ray session; its trials find it by name)."""
    return PhaseBoard.options(name=BOARD, get_if_exists=True).remote()


def read_board() -> dict[str, str]:
    """Every trial's phase, empty where no board exists (no study on this Ray)."""
    try:
        return ray.get(ray.get_actor(BOARD).read.remote(), timeout=5)
    except (ValueError, ray.exceptions.GetTimeoutError):
        return {}


def phase_teller(trial_id: str, label: str) -> Callable[[str], None]:
    """A trial's `on_phase`: tells the board (fire and forget) and prints an evaluation's
    progress as `label: text` at most every PRINT_EVERY_S seconds."""
    try:
        board = ray.get_actor(BOARD)
    except ValueError:
        board = None
    printed = [time.monotonic()]

    def tell(phase: str) -> None:
        if board is not None:
            board.tell.remote(trial_id, phase)
        if ":" in phase and time.monotonic() - printed[0] >= PRINT_EVERY_S:
            printed[0] = time.monotonic()
            print(f"{label}: {phase}", flush=True)

    return tell
