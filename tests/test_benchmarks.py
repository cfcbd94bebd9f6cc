"""The benchmarks refuse an argument out of range with one line and exit 2, before any work."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# (script, arguments, the start of its one error line)
REFUSED = [
    ("cluster_scaling", ["--trials", "0"], "error: --trials: must be > 0, got 0; allowed:"),
    ("eval_cost", ["--torchattacks", "-5"], "error: --torchattacks: must be > 0, got -5; allowed:"),
    ("gpu_throughput", ["--batch", "0"], "error: --batch: must be > 0, got 0; allowed:"),
    ("lipschitz_layers", ["--repeats", "0"], "error: --repeats: must be > 0, got 0; allowed:"),
    ("method_step_time", ["--steps", "-1"], "error: --steps: must be > 0, got -1; allowed:"),
    ("racing_power", ["--trial-seconds", "0"], "error: --trial-seconds: must be > 0, got 0.0; allowed:"),
    ("racing_power", ["--configs", "1"], "error: --configs: a race needs at least 2, got 1; allowed:"),
    ("racing_power", ["--examples", "500", "--max-examples", "100"], "error: --max-examples: 100 is below"),
    ("soc_fast_train", ["--depth", "0"], "error: --depth: must be > 0, got 0; allowed:"),
    ("startup_floor", ["--repeats", "0"], "error: --repeats: must be > 0, got 0; allowed:"),
    ("study_overhead", ["--trials", "0"], "error: --trials: must be > 0, got 0; allowed:"),
    ("tracking_scale", ["--flood", "50", "0"], "error: --flood: must be > 0, got [50, 0]; allowed:"),
]


@pytest.mark.parametrize(("script", "arguments", "line"), REFUSED,
                         ids=[f"{b}{''.join(a[:1])}" for b, a, _ in REFUSED])
def test_a_benchmark_argument_out_of_range_gets_one_line_and_exit_2(script, arguments, line, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(sys, "argv", [f"{script}.py", *arguments])
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(BENCHMARKS / f"{script}.py"), run_name="__main__")
    assert stopped.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith(line), err
