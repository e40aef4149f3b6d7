"""Which otlp_proto reader runs, and that the compiled one is built, packaged and fuzzed."""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from spanmetrics.decode import batch

ROOT = Path(__file__).resolve().parents[2]


def version(env: dict[str, str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "spanmetrics", "--version"],
        env={**os.environ, **env}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_version_says_which_reader_runs() -> None:
    assert version({"SPANMETRICS_NATIVE": "0"}).endswith("(otlp_proto reader: python)")
    built = importlib.util.find_spec("spanmetrics.decode._scan") is not None
    expected = "native" if built else "python"
    assert version({"SPANMETRICS_NATIVE": "1"}).endswith(f"(otlp_proto reader: {expected})")


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI has a C compiler by definition")
def test_make_install_built_the_extension() -> None:
    """In CI (a clean clone with gcc), `make install` must have compiled the scanner (also
    when this run reads with SPANMETRICS_NATIVE=0)."""
    importlib.import_module("spanmetrics.decode._scan")


def test_the_pure_path_is_what_native_0_selects() -> None:
    code = "from spanmetrics.decode import batch; print(batch.PATH)"
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "SPANMETRICS_NATIVE": "0"},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == "python"


@pytest.mark.skipif(batch._native is None, reason="the extension is not built")
def test_a_short_fuzz_run_finds_nothing(tmp_path: Path) -> None:
    """`make fuzz` runs longer; this keeps the target working and catches the obvious."""
    pytest.importorskip("atheris")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "fuzz" / "fuzz_scan.py"), str(tmp_path / "corpus"),
         "-runs=30000", f"-artifact_prefix={tmp_path}/"],
        check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 30000 runs" in result.stderr


@pytest.mark.skipif(
    batch._native is None, reason="the scanner is off (SPANMETRICS_NATIVE=0) or not built"
)
def test_a_wheel_carries_the_compiled_scanner(tmp_path: Path) -> None:
    """`pip wheel .` on a machine with a C compiler builds the extension into the wheel."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("spanmetrics-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("spanmetrics/decode/_scan.") and n.endswith(".so") for n in names)
