"""A real Prometheus process for tests: free port, its own data directory, stopped after."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from spanmetrics.net import find_free_port

BINARY = shutil.which("prometheus") or "/usr/bin/prometheus"
#: What the issue asks Prometheus to run with, plus exemplar storage (off by default).
FLAGS = (
    "--web.enable-remote-write-receiver",
    "--enable-feature=native-histograms,exemplar-storage",
)


class Prometheus:
    """``prometheus`` with a config and flags, serving on 127.0.0.1 on a free port."""

    def __init__(
        self,
        workdir: Path,
        config: str = "",
        flags: tuple[str, ...] = FLAGS,
        port: int | None = None,
    ) -> None:
        """Start it; with ``port`` and the ``workdir`` of a stopped one, that one again,
        with its data."""
        if not Path(BINARY).exists():
            pytest.skip("prometheus is not installed (apt-get install -y prometheus)")
        self.port = port or find_free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        config_file = workdir / "prometheus.yml"
        config_file.write_text(config or "global:\n  scrape_interval: 15s\n")
        self._log = (workdir / "prometheus.log").open("ab")
        self.proc = subprocess.Popen(
            [BINARY, f"--config.file={config_file}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", *flags],
            stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.log_path = workdir / "prometheus.log"
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("prometheus did not become ready")
            time.sleep(0.1)  # polling a process that offers no readiness event

    def api(self, path: str, **params: Any) -> Any:
        """GET ``/api/v1/<path>``; returns ``data`` (raises on an error status)."""
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as r:
            body = json.load(r)
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body}")
        return body["data"]

    def query(self, expr: str, time_s: float | None = None) -> list[Any]:
        """An instant query's result vector."""
        result: list[Any] = self.api("query", query=expr, time=time_s)["result"]
        return result

    def self_metrics(self) -> str:
        """Prometheus's own /metrics text."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as r:
            return str(r.read().decode())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()


def wait_for(predicate: Any, timeout_s: float, what: str) -> Any:
    """Poll ``predicate()`` until it returns something truthy (Prometheus ingests and
    answers asynchronously; there is no event to await)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}; last value {value!r}")
        time.sleep(0.2)
