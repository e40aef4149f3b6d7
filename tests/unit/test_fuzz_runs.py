"""Short runs of the record and topology fuzz targets (``make fuzz`` runs them longer):
they keep the targets working and catch the obvious. The scanner's own target has its
short run in tests/unit/test_native_path.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("target", "runs"),
    [
        ("fuzz_records.py", 5000),  # on both passes: the reader is part of the target
        pytest.param("fuzz_topology.py", 500, marks=pytest.mark.once),
    ],
)
def test_a_short_fuzz_run_finds_nothing(target: str, runs: int, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / target), str(tmp_path / "corpus"),
         f"-runs={runs}", f"-artifact_prefix={tmp_path}/"],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Done {runs} runs" in result.stderr
