"""Secrets never leave the process (issue #13, item 9). A run with a Redis ACL password,
a remote-write password and a SASL password, each given through ``${env:}`` or
``${file:}`` as a Kubernetes Secret would: none of them is in the worker's log, in what
it publishes (its telemetry included), in ``validate``'s summary or in ``--help``. The
redacted forms are, so the test looks where the secrets would be."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer

from spanmetrics.kafka.admin import ensure_topics
from spanmetrics.net import find_free_port
from tests.integration.batches import Batches
from tests.integration.redis_server import PASSWORD, USER
from tests.integration.test_fleet_exactness import Fleet, Output, expected_counts

pytestmark = [pytest.mark.integration, pytest.mark.once]

REMOTE_WRITE_PASSWORD = f"rw-{uuid.uuid4().hex}"
SASL_PASSWORD = f"sasl-{uuid.uuid4().hex}"


async def _all_records(bootstrap: str, topic: str) -> list[bytes]:
    """Every record value of ``topic`` so far, raw."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=None, max_partition_fetch_bytes=16 << 20)  # fmt: skip
    await consumer.start()
    values: list[bytes] = []
    try:
        while batches := await consumer.getmany(timeout_ms=2000):
            values += [r.value for records in batches.values() for r in records if r.value]
    finally:
        await consumer.stop()
    return values


def _run(args: list[str], env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "spanmetrics", *args], env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    return out.stdout + out.stderr


def _wait_for_text(path: Path, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (path.read_text() if path.exists() else ""):
        assert time.monotonic() < deadline, f"{text!r} not in {path}"
        time.sleep(0.2)


def test_no_secret_of_a_run_is_in_its_logs_output_summary_or_help(
    broker: Any, tmp_path: Path, private_redis: tuple[str, Any]
) -> None:
    redis_url, _ = private_redis
    suffix = uuid.uuid4().hex[:8]
    topic, metrics_topic = f"spans-{suffix}", f"metrics-{suffix}"
    closed_port = find_free_port()  # nothing listens: the remote write retries and logs
    topology = tmp_path / "topology.yaml"
    topology.write_text(yaml.safe_dump({
        "source": {"topic": topic, "broker": broker.url, "group": f"secrets-{suffix}",
                   "dead_letter_topic": f"dlq-{suffix}"},
        "state": "${env:SM_STATE}",
        "spanmetrics": {"metrics_flush_interval": "1s"},
        "sinks": [
            {"kafka": {"topic": metrics_topic}},
            {"prometheus_remote_write": {"endpoint": "http://writer:${env:SM_RW_PASSWORD}@"
                                         f"127.0.0.1:{closed_port}/api/v1/write"}},
        ],
    }))  # fmt: skip
    env = {**os.environ, "SM_STATE": redis_url, "SM_RW_PASSWORD": REMOTE_WRITE_PASSWORD,
           "SPANMETRICS_STATE": redis_url}  # fmt: skip
    secrets = (PASSWORD, REMOTE_WRITE_PASSWORD, SASL_PASSWORD)
    fleet = Fleet(topology, tmp_path)
    saved = os.environ.copy()
    os.environ.update(env)  # the worker processes inherit it
    try:
        fleet.start("a")

        async def scenario() -> tuple[bool, list[bytes]]:
            await ensure_topics(broker.bootstrap, {topic: 2, metrics_topic: 1})
            batches = Batches(broker.bootstrap, topic, seed=21)
            await batches.start()
            try:
                await batches.send(10)
            finally:
                await batches.stop()
            output = Output(broker.bootstrap, metrics_topic)
            await output.consumer.start()
            try:
                done = await output.wait_for(expected_counts(batches.sent), False, 120)
            finally:
                await output.consumer.stop()
            return done, await _all_records(broker.bootstrap, metrics_topic)

        done, published = asyncio.run(scenario())
        _wait_for_text(tmp_path / "a.log", "remote write to", 60)
    finally:
        fleet.stop_all()
        os.environ.clear()
        os.environ.update(saved)
    log = (tmp_path / "a.log").read_text()
    assert done, log[-3000:]
    assert any(b"spanmetrics.worker." in value for value in published)  # telemetry is there
    assert f"redis://{USER}:***@" in log and "http://writer:***@" in log, log[-3000:]

    # A SASL password, from a file: the client settings take it, nothing prints it.
    secret_file = tmp_path / "sasl-password"
    secret_file.write_text(SASL_PASSWORD + "\n")
    sasl = yaml.safe_load(topology.read_text())
    sasl["source"]["auth"] = {"sasl": {"mechanism": "SCRAM-SHA-512", "username": "alice",
                                       "password": "${file:" + str(secret_file) + "}"}}  # fmt: skip
    sasl_topology = tmp_path / "sasl.yaml"
    sasl_topology.write_text(yaml.safe_dump(sasl))
    # The embedded broker has no SASL: the worker retries, and says so, until stopped.
    sasl_fleet = Fleet(sasl_topology, tmp_path)
    os.environ.update(env)
    try:
        sasl_fleet.start("sasl")
        _wait_for_text(tmp_path / "sasl.log", "source.broker: cannot reach", 60)
    finally:
        sasl_fleet.stop_all()
        os.environ.clear()
        os.environ.update(saved)

    texts = {
        "worker log": log,
        "SASL worker log": (tmp_path / "sasl.log").read_text(),
        "validate": _run(["validate", "--topology", str(topology)], env),
        "validate (SASL)": _run(["validate", "--topology", str(sasl_topology)], env),
        "worker --help": _run(["worker", "--help"], env),
    }
    assert "http://writer:***@" in texts["validate"], texts["validate"]
    for secret in secrets:
        for what, text in texts.items():
            assert secret not in text, f"a secret is in the {what}"
        assert not any(secret.encode() in value for value in published), "a secret is published"
