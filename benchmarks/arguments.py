"""The benchmarks' argument parsing: a value out of range gets one line and exit 2, before any work."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def parse_checked(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
                  positive: Sequence[str] = ()) -> argparse.Namespace:
    """`parser.parse_args(argv)`, then every argument named in `positive` (each of its values, for a
    list; an optional one left out is not checked) must be > 0; otherwise one line
    `error: --NAME: ...; allowed: ...` and exit 2."""
    args = parser.parse_args(argv)
    for name in positive:
        value = getattr(args, name)
        values = value if isinstance(value, list) else [] if value is None else [value]
        if any(v <= 0 for v in values):
            print(f"error: --{name.replace('_', '-')}: must be > 0, got {value}; allowed: numbers > 0",
                  file=sys.stderr)
            raise SystemExit(2)
    return args
