"""Outages survived with nothing lost: Redis frozen for 30 s (SIGSTOP, then SIGCONT) while
spans flow into two workers, and a Sentinel failover; the probes while Redis is frozen;
Redis with an ACL user, and over TLS. Every span is counted exactly."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.net import find_free_port
from tests.integration.batches import Batches
from tests.integration.redis_server import PASSWORD, wait_redis
from tests.integration.test_fleet_exactness import Fleet, Output, expected_counts

pytestmark = [pytest.mark.integration, pytest.mark.once]

#: How long the outage lasts, as the issue has it.
OUTAGE_S = 30.0


def test_redis_frozen_for_30_seconds(
    broker: Any, tmp_path: Path, private_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    url, redis_proc = private_redis
    suffix = uuid.uuid4().hex[:8]
    topic, metrics, group = f"out-{suffix}", f"out-metrics-{suffix}", f"out-{suffix}"
    topology = tmp_path / "t.yaml"
    topology.write_text(yaml.safe_dump({
        "source": {"topic": topic, "broker": broker.url, "group": group,
                   "dead_letter_topic": f"dlq-{suffix}"},
        "state": url,
        "spanmetrics": {"metrics_flush_interval": "1s"},
        "sinks": [{"kafka": {"topic": metrics}}],
    }))  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    seed = 21
    seen: list[str] = []

    async def scenario() -> tuple[Any, Output]:
        await ensure_topics(broker.bootstrap, {topic: 4, metrics: 1})
        output = Output(broker.bootstrap, metrics)
        await output.consumer.start()
        batches = Batches(broker.bootstrap, topic, seed)
        await batches.start()
        sent, send = batches.sent, batches.send

        try:
            fleet.start("a")
            fleet.start("b")
            await send(10)
            deadline = time.monotonic() + 120
            while output.records == 0:
                assert time.monotonic() < deadline, "the fleet published nothing"
                await output.poll()
            redis_proc.send_signal(signal.SIGSTOP)
            seen.append("redis frozen")
            frozen_at = time.monotonic()
            while time.monotonic() - frozen_at < OUTAGE_S:  # spans keep coming
                await send(1)
                await output.poll(timeout_ms=200)
            during = output.records
            redis_proc.send_signal(signal.SIGCONT)
            seen.append(f"redis back after {time.monotonic() - frozen_at:.0f}s")
            await send(10)
            expected = expected_counts(sent)
            await output.wait_for(expected, False, 120)
            seen.append(f"{output.records - during} records after the outage")
            return expected, output
        finally:
            await batches.stop()
            await output.consumer.stop()

    try:
        expected, output = asyncio.run(scenario())
        alive = {name: proc.poll() is None for name, proc in fleet.procs.items()}
    finally:
        fleet.stop_all()
    logs = {p.name: p.read_text() for p in tmp_path.glob("*.log")}
    print("\n".join(seen))  # what the test saw, for the report
    tail = "\n".join(text[-3000:] for text in logs.values())
    assert all(alive.values()), f"a worker died during the outage: {alive}\n{tail}"
    assert not any("Traceback" in text and "Crashed" in text for text in logs.values()), tail
    assert output.totals(False) == expected, tail


def _probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    import json
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _one_worker(tmp_path: Path, broker: Any, state: str, name: str) -> tuple[Fleet, int]:
    """A topology on ``state`` with its input topic created, and a fleet of one worker
    serving its probes on the returned port (not started yet)."""
    suffix = f"{name}-{uuid.uuid4().hex[:8]}"
    topology = tmp_path / "t.yaml"
    topology.write_text(yaml.safe_dump({
        "source": {"topic": suffix, "broker": broker.url, "group": suffix,
                   "dead_letter_topic": f"dlq-{suffix}"},
        "state": state,
        "spanmetrics": {"metrics_flush_interval": "1s"},
        "sinks": [{"kafka": {"topic": f"metrics-{suffix}"}}],
    }))  # fmt: skip
    asyncio.run(ensure_topics(broker.bootstrap, {suffix: 2}))
    port = find_free_port()
    return Fleet(topology, tmp_path, ["--health-port", str(port)]), port


def _ready(port: int, timeout_s: float, **expected: str) -> dict[str, Any]:
    """Wait until /readyz answers 200 (with ``expected`` checks); its body."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status, body = _probe(port, "/readyz")
        except OSError:
            status, body = 0, {}
        if status == 200 and all(body.get(k) == v for k, v in expected.items()):
            return body
        assert time.monotonic() < deadline, f"never ready: {body}"
        time.sleep(0.5)


def test_probes_follow_redis(
    broker: Any, tmp_path: Path, private_redis: tuple[str, subprocess.Popen[bytes]]
) -> None:
    """/readyz turns 503 naming the state store while Redis is frozen, and back to 200;
    /healthz stays 200: a worker waiting for Redis is not one to restart."""
    url, redis_proc = private_redis
    fleet, port = _one_worker(tmp_path, broker, url, "probe")
    try:
        fleet.start("a")
        body = _ready(port, 120)
        assert body["group"] == "joined" and body["state"] == "reachable"
        assert _probe(port, "/healthz")[0] == 200
        redis_proc.send_signal(signal.SIGSTOP)
        try:
            status, body = _probe(port, "/readyz")
            assert status == 503 and body["state"] == "unreachable", body
            assert _probe(port, "/healthz")[0] == 200
        finally:
            redis_proc.send_signal(signal.SIGCONT)
        _ready(port, 30)  # ready again once Redis answers
    finally:
        fleet.stop_all()
    # The worker logged in with the ACL user's password and never wrote it anywhere.
    log = (tmp_path / "a.log").read_text()
    assert "shard" in log and PASSWORD not in log


def test_a_worker_checkpoints_to_redis_over_tls(broker: Any, tmp_path: Path) -> None:
    """``rediss://`` with the CA in the URL, as redis-py reads it: a worker joins, checkpoints
    and is ready, with Redis serving TLS only."""
    from tests.integration.test_kafka_tls import make_certificates

    binary = shutil.which("redis-server")
    if binary is None or shutil.which("openssl") is None:
        pytest.skip("redis-server and openssl are needed")
    ca, cert, key = make_certificates(tmp_path)
    port = find_free_port()
    proc = subprocess.Popen(
        [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
         "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    fleet, health = _one_worker(tmp_path, broker, url, "tlsr")
    try:
        wait_redis(url, "redis-server over TLS")
        client = redis.Redis.from_url(url, socket_connect_timeout=1)
        fleet.start("a")
        _ready(health, 120, checkpoint="ok")
        assert client.keys("spanmetrics:tlsr-*"), "nothing checkpointed"
        client.close()
    finally:
        fleet.stop_all()
        proc.terminate()
        proc.wait(timeout=10)


def test_a_sentinel_failover_keeps_the_counts_exact(broker: Any, tmp_path: Path) -> None:
    """A primary, a replica and a Sentinel; the worker finds the primary through the
    Sentinel, and after the primary is killed, the promoted replica. Spans sent before and
    after are all counted."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    primary_port, replica_port, sentinel_port = (find_free_port() for _ in range(3))
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    primary = subprocess.Popen([binary, "--port", str(primary_port), *common],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    replica = subprocess.Popen(
        [binary, "--port", str(replica_port), "--replicaof", "127.0.0.1", str(primary_port),
         *common], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor spanmetrics 127.0.0.1 {primary_port} 1\n"
        "sentinel down-after-milliseconds spanmetrics 1000\n"
        "sentinel failover-timeout spanmetrics 5000\n"
    )
    sentinel = subprocess.Popen([binary, str(conf), "--sentinel"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    procs = [primary, replica, sentinel]
    suffix = uuid.uuid4().hex[:8]
    topic, metrics = f"sent-{suffix}", f"sent-metrics-{suffix}"
    topology = tmp_path / "t.yaml"
    topology.write_text(yaml.safe_dump({
        "source": {"topic": topic, "broker": broker.url, "group": f"sent-{suffix}",
                   "dead_letter_topic": f"dlq-{suffix}"},
        "state": f"redis+sentinel://127.0.0.1:{sentinel_port}/spanmetrics/0",
        "spanmetrics": {"metrics_flush_interval": "1s"},
        "sinks": [{"kafka": {"topic": metrics}}],
    }))  # fmt: skip
    fleet = Fleet(topology, tmp_path)
    seed = 23
    seen: list[str] = []

    def primary_of_sentinel() -> int:
        client = redis.Redis(port=sentinel_port, socket_connect_timeout=1)
        try:
            _host, port = client.execute_command("SENTINEL", "get-master-addr-by-name",
                                                 "spanmetrics")  # fmt: skip
            return int(port)
        finally:
            client.close()

    def sentinel_knows_the_replica() -> bool:
        # The Sentinel learns replicas from the primary's INFO, every 10 s: a primary killed
        # before that leaves it nothing to promote.
        client = redis.Redis(port=sentinel_port, socket_connect_timeout=1)
        try:
            replicas = client.execute_command("SENTINEL", "replicas", "spanmetrics")
        finally:
            client.close()
        # redis-py parses each replica into a dict with is_* flags.
        return any(not r.get("is_disconnected") and not r.get("is_sdown") for r in replicas)

    def in_sync() -> bool:
        p = redis.Redis(port=primary_port).info("replication")
        r = redis.Redis(port=replica_port).info("replication")
        return bool(p.get("connected_slaves")) and r.get("master_repl_offset") == p.get(
            "master_repl_offset"
        )

    async def scenario() -> tuple[Any, Output]:
        await ensure_topics(broker.bootstrap, {topic: 2, metrics: 1})
        output = Output(broker.bootstrap, metrics)
        await output.consumer.start()
        batches = Batches(broker.bootstrap, topic, seed)
        await batches.start()
        sent, send = batches.sent, batches.send

        try:
            fleet.start("a")
            await send(10)
            assert await output.wait_for(expected_counts(sent), False, 120), (
                "not counted before the failover"
            )
            deadline = time.monotonic() + 30
            while not sentinel_knows_the_replica():
                assert time.monotonic() < deadline, "the Sentinel never saw the replica"
                await asyncio.sleep(0.2)
            deadline = time.monotonic() + 20
            while not in_sync():  # the replica holds every checkpoint written so far
                assert time.monotonic() < deadline, "the replica never caught up"
                await asyncio.sleep(0.1)
            primary.kill()
            seen.append("primary killed")
            deadline = time.monotonic() + 60
            while primary_of_sentinel() != replica_port:
                assert time.monotonic() < deadline, "the Sentinel did not fail over"
                await asyncio.sleep(0.2)
            seen.append("replica promoted")
            await send(10)
            assert await output.wait_for(expected_counts(sent), False, 120), (
                "not counted after the failover"
            )
            return expected_counts(sent), output
        finally:
            await batches.stop()
            await output.consumer.stop()

    try:
        wait_redis(f"redis://127.0.0.1:{primary_port}", "the primary")
        wait_redis(f"redis://127.0.0.1:{replica_port}", "the replica")
        wait_redis(f"redis://127.0.0.1:{sentinel_port}", "the Sentinel")
        expected, output = asyncio.run(scenario())
        alive = fleet.procs["a"].poll() is None
    finally:
        fleet.stop_all()
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)
    print("\n".join(seen))
    logs = "\n".join(p.read_text()[-3000:] for p in tmp_path.glob("*.log"))
    assert alive, logs
    assert output.totals(False) == expected, logs
