"""Fuzz target of the compiled scanner (atheris): ``make fuzz`` runs it for a while, and a
short run is part of ``make test`` (tests/unit/test_native_path.py).

Each input must get the same verdict from upb and the scanner: both reject it, or both
read the same batch (tests/property/test_native_scan.py). A crash, a hang or a
disagreement stops the run with the input saved by libFuzzer.

Coverage guidance covers the Python side only: instrumenting the C scanner needs clang's
``-fsanitize=fuzzer-no-link``, and this machine has gcc. The seed corpus (valid records,
written on the first run) lets the mutations start from real structure.

    python tests/fuzz/fuzz_scan.py CORPUS_DIR -max_total_time=60
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fuzz.harness import fuzz  # noqa: E402

with atheris.instrument_imports():
    from spanmetrics.decode.batch import PATH
    from tests.property.test_native_scan import FULL, _fixed_record, agree


def seed_corpus(directory: Path) -> None:
    """A few valid records to mutate from, when the corpus is empty."""
    import random

    directory.mkdir(parents=True, exist_ok=True)
    if not any(directory.iterdir()):
        for seed in range(8):
            (directory / f"seed-{seed}").write_bytes(_fixed_record(random.Random(seed)))


def test_one_input(data: bytes) -> None:
    if not agree(data, FULL):
        raise AssertionError(f"upb and the scanner disagree on {data.hex()}")


def main() -> None:
    if PATH != "native":
        sys.exit("the compiled scanner is not built (or SPANMETRICS_NATIVE=0)")
    fuzz(test_one_input, seed_corpus)


if __name__ == "__main__":
    main()
