"""Fuzz target of the topology loader (atheris): YAML, ``${env:}``/``${file:}`` expansion
and validation. ``make fuzz`` runs it for a while, and a short run is part of
``make test`` (tests/unit/test_fuzz_runs.py).

Any input either loads or raises ``ConfigError`` (one line per problem, naming the key
path, which ``spanmetrics validate`` prints without a traceback). Any other exception
is a traceback a user would see, and stops the run with the input saved. The seeds are
the shipped topologies and the README's.

    python tests/fuzz/fuzz_topology.py CORPUS_DIR -max_total_time=60
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.fuzz.harness import fuzz  # noqa: E402

with atheris.instrument_imports(include=["spanmetrics", "yaml"]):
    from spanmetrics.config.load import ConfigError, load_topology

#: One file, rewritten for each input: the loader reads files, as the worker does.
WORK = Path(tempfile.mkdtemp(prefix="fuzz-topology-"))
TOPOLOGY = WORK / "topology.yaml"


def seed_corpus(directory: Path) -> None:
    """The shipped topologies, when the corpus is empty."""
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        return
    for path in sorted((ROOT / "topologies").glob("*.yaml")):
        (directory / path.name).write_bytes(path.read_bytes())
    (directory / "expansions.yaml").write_text(
        "source:\n  auth:\n    sasl: {mechanism: PLAIN, username: u, password: '${env:PW:-x}'}\n"
        "state: 'redis://u:${file:secret}@127.0.0.1:6379/0'\n"
    )
    (WORK / "secret").write_text("hunter2\n")


def test_one_input(data: bytes) -> None:
    TOPOLOGY.write_bytes(data)
    with contextlib.suppress(ConfigError):
        load_topology(TOPOLOGY)


def main() -> None:
    fuzz(test_one_input, seed_corpus, before=lambda: os.chdir(WORK))  # relative ${file:}


if __name__ == "__main__":
    main()
