"""Targets: one way to declare a number to beat, print whether it was met, and sum them up.

Every benchmark's ``run`` returns its :class:`Target` list from :func:`report`, which prints
each under the tables that measured it; ``bench.run`` and :func:`standalone` print them all
again at the end, so a run's last lines say where every target stands.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import NamedTuple

from bench.common import BenchError, header


class Target(NamedTuple):
    """A number to beat: what it says, whether this run met it, and the figures behind it."""

    name: str
    met: bool
    detail: str


Outcome = list[Target]


def verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def report(*targets: Target) -> Outcome:
    """Print each target under the tables that measured it; the list, for the summary."""
    for target in targets:
        print(f"target: {target.name}: {verdict(target.met)}, {target.detail}")
    sys.stdout.flush()
    return list(targets)


def print_targets(outcome: Outcome) -> None:
    """The summary at the end of a run: every target of every benchmark."""
    print("\n## Targets\n")
    for target in outcome:
        print(f"- {verdict(target.met)}: {target.name}: {target.detail}")


def standalone(
    name: str, title: str, argv: Sequence[str] | None, measure: Callable[[], Outcome]
) -> int:
    """A benchmark run as ``python -m bench.NAME``: the machine, the command, its targets."""
    shown = list(argv) if argv is not None else sys.argv[1:]
    header(title, f"python -m bench.{name} {' '.join(shown)}")
    try:
        outcome = measure()
    except BenchError as exc:
        print(f"\n{name}: could not run: {exc}", file=sys.stderr)
        return 1
    print_targets(outcome)
    return 0
