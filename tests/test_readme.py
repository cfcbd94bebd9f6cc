"""The README is the user's manual: its method table and its test command must stay current."""

from __future__ import annotations

import re
from pathlib import Path

from trainables.core.methods import METHODS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_method_table_lists_every_method_with_every_hyperparameter() -> None:
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([a-z0-9_+]+)`[^|]*\| (.*?) \|", README, re.M)}
    assert set(rows) == set(METHODS.names())
    for name in METHODS:
        for param in METHODS.get(name).params:
            assert f"`{param}`" in rows[name], f"README's {name} row lacks {param}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    test_command = blocks[1]
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
