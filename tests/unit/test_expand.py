"""``${env:NAME}`` and ``${file:PATH}`` in topology files, as in Collector configs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from spanmetrics.config.expand import ExpansionError, expand
from spanmetrics.config.load import ConfigError, load_topology
from spanmetrics.net import redacted


def test_environment_files_defaults_and_escapes(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    document = {
        "state": "redis://:${file:" + str(secret) + "}@${env:REDIS_HOST}:6379/0",
        "source": {"group": "${env:GROUP:-spanmetrics}", "topic": "price$$"},
        "sinks": [{"kafka": {"topic": "${env:TOPIC}"}}],
    }
    got = expand(document, {"REDIS_HOST": "redis", "TOPIC": "otlp_metrics"})
    assert got == {
        "state": "redis://:s3cret@redis:6379/0",
        "source": {"group": "spanmetrics", "topic": "price$"},
        "sinks": [{"kafka": {"topic": "otlp_metrics"}}],
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("${env:NOPE}", "sinks[0].kafka.topic: ${env:NOPE} is not set in the environment"),
        ("${file:/no/such/file}", "sinks[0].kafka.topic: ${file:/no/such/file} cannot be read"),
        # Not a regular file (a device such as /dev/zero would be read for ever), and not
        # text (this was a traceback).
        ("${file:/}", "sinks[0].kafka.topic: ${file:/} is not a regular file"),
        ("${file:" + sys.executable + "}", "sinks[0].kafka.topic: ${file:" + sys.executable),
    ],
)
def test_what_cannot_be_expanded_names_the_key(value: str, message: str) -> None:
    with pytest.raises(ExpansionError) as err:
        expand({"sinks": [{"kafka": {"topic": value}}]}, {})
    assert str(err.value).startswith(message)


def test_a_binary_or_huge_file_is_refused_by_name(tmp_path: Path) -> None:
    binary, huge = tmp_path / "key.der", tmp_path / "huge"
    binary.write_bytes(b"\x30\x82\xff\xfe")
    huge.write_bytes(b"a" * ((1 << 20) + 1))
    for path, message in ((binary, "is not UTF-8 text"), (huge, "is larger than 1048576 bytes")):
        with pytest.raises(ExpansionError) as err:
            expand({"state": "${file:" + str(path) + "}"}, {})
        assert str(err.value) == "state: ${file:" + str(path) + "} " + message


def test_a_topology_file_is_expanded_when_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("source:\n  broker: kafka://${env:KAFKA}\nstate: ${env:STATE}\n")
    monkeypatch.setenv("KAFKA", "kafka:9092")
    monkeypatch.setenv("STATE", "redis://127.0.0.1:6379/1")
    topology = load_topology(path)
    assert topology.source.broker == "kafka://kafka:9092"
    assert topology.state == "redis://127.0.0.1:6379/1"
    monkeypatch.delenv("STATE")
    with pytest.raises(ConfigError) as err:
        load_topology(path)
    assert "state: ${env:STATE} is not set" in str(err.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            {"source": {"broker": "tcp://kafka:9092"}},
            "source.broker: expected kafka://HOST:PORT[,HOST:PORT], got scheme 'tcp'",
        ),
        ({"source": {"broker": "kafka://kafka"}}, "source.broker: expected kafka://HOST:PORT"),
        ({"source": {"broker": "kafka://a:9092,b:x"}}, "source.broker: expected kafka://HOST:PORT"),
        (
            {"state": "redis://:pw@redis:abc/0"},
            "state: the port of 'redis://:***@redis:abc/0' is not a number: 'abc'",
        ),
        ({"state": "redis://redis:6379/zero"}, "state: the database of"),
    ],
)
def test_validate_rejects_what_the_worker_would_die_on(document: Any, message: str) -> None:
    from spanmetrics.config.load import parse_topology

    with pytest.raises(ConfigError) as err:
        parse_topology(document)
    assert message in str(err.value), str(err.value)
    assert "pw" not in str(err.value)


def test_good_broker_and_state_urls_pass() -> None:
    from spanmetrics.config.load import parse_topology

    t = parse_topology({"source": {"broker": "kafka://a:9092,b:9093"},
                        "state": "redis://user:pw@redis:6379/2"})  # fmt: skip
    assert t.source.broker == "kafka://a:9092,b:9093"
    assert parse_topology({"source": {"broker": "127.0.0.1:9092"}}).source.broker


def test_sentinel_urls() -> None:
    from spanmetrics.config.load import parse_topology
    from spanmetrics.net import parse_sentinel_url

    url = "redis+sentinel://user:pw@s1:26379,s2:26380/mymaster/3"
    assert parse_topology({"state": url}).state == url
    assert parse_sentinel_url(url) == ([("s1", 26379), ("s2", 26380)], "mymaster", 3, "user", "pw")
    for bad in ("redis+sentinel://s1/mymaster", "redis+sentinel://s1:26379/"):
        with pytest.raises(ConfigError) as err:
            parse_topology({"state": bad})
        assert str(err.value).count("state:") == 1


def test_settings_are_printed_without_their_secrets() -> None:
    settings = {
        "prometheus_remote_write": {"endpoint": "https://u:pw1@host/api/v1/write"},
        "auth": {"sasl": {"mechanism": "PLAIN", "username": "alice", "password": "pw2"}},
        "state": ["redis://:pw3@redis:6379/0", "redis://redis:6379/0"],
    }
    assert redacted(settings) == {
        "prometheus_remote_write": {"endpoint": "https://u:***@host/api/v1/write"},
        "auth": {"sasl": {"mechanism": "PLAIN", "username": "alice", "password": "***"}},
        "state": ["redis://:***@redis:6379/0", "redis://redis:6379/0"],
    }
