"""A Redis of a test's own, for tests that freeze it, fail it over or log in to it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from spanmetrics.net import find_free_port


def wait_redis(url: str, what: str, timeout_s: float = 15.0) -> None:
    """Wait until the Redis at ``url`` answers a ping."""
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                assert time.monotonic() < deadline, f"{what} did not start"
                time.sleep(0.05)
    finally:
        client.close()


#: The ACL user and password of the private Redis: the workers log in with them.
USER, PASSWORD = "spanmetrics", "s3cret-Pa55word"


def private_redis_server(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A Redis of the test's own (the ``private_redis`` fixture), that it may freeze; it
    takes an ACL user and password only (the default user is off), as a production Redis
    would. Yields its URL, with the user and password, and its process."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = find_free_port()
    config = tmp_path / "redis.conf"
    config.write_text(
        f'port {port}\nbind 127.0.0.1\nsave ""\nappendonly no\ndir {tmp_path}\n'
        f"user default off\nuser {USER} on >{PASSWORD} ~* &* +@all\n"
    )
    proc = subprocess.Popen([binary, str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{port}/0"
    wait_redis(url, "redis-server")
    with pytest.raises(redis.AuthenticationError):  # without the password: refused
        redis.Redis(port=port, socket_connect_timeout=1).set("k", "v")
    try:
        yield url, proc
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        proc.wait(timeout=10)
