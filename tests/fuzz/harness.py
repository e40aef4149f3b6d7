"""What every fuzz target's ``main`` does: seed each corpus directory named on the command
line, then hand the rest of the arguments to libFuzzer (through atheris)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import atheris


def fuzz(
    test_one_input: Callable[[bytes], None],
    seed_corpus: Callable[[Path], None],
    before: Callable[[], None] | None = None,
) -> None:
    """Seed the corpora (paths resolved first), run ``before``, then fuzz until libFuzzer
    stops (``-runs``, ``-max_total_time``, or a crash)."""
    for directory in (Path(a).resolve() for a in sys.argv[1:] if not a.startswith("-")):
        seed_corpus(directory)
    if before is not None:
        before()
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
