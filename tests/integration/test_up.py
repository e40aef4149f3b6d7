"""``make run`` (``spanmetrics up``) watches what it starts: when the worker dies, the run
stops at once with the worker's log on screen and exit status 1, and leaves no process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def children(pid: int) -> dict[int, str]:
    """Child processes of ``pid``: pid -> command line."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(entry.name)] = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                )
        except (OSError, ValueError, IndexError):
            continue
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_dead_worker_stops_the_run_with_its_log_and_status_1(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    out, err = (tmp_path / "out.txt").open("wb"), (tmp_path / "err.txt").open("wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "spanmetrics", "up", "--rate", "2000", "--partitions", "2",
         "--run-dir", str(run_dir)],
        stdout=out, stderr=err,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        worker_log = run_dir / "worker.log"
        while not (worker_log.exists() and "flush" in worker_log.read_text()):
            assert up.poll() is None, (tmp_path / "err.txt").read_text()
            assert time.monotonic() < deadline, "the worker never flushed"
            time.sleep(0.2)
        started = children(up.pid)
        (worker,) = [pid for pid, cmd in started.items() if " worker " in cmd]
        os.kill(worker, signal.SIGKILL)
        status = up.wait(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()
        out.close()
        err.close()
    stderr = (tmp_path / "err.txt").read_text()
    assert status == 1
    assert "worker exited with status -9" in stderr
    assert f"last lines of {run_dir / 'worker.log'}" in stderr
    assert "flush" in stderr  # the log's lines are on screen
    assert not [pid for pid in started if alive(pid)], "a process of the run was left behind"
