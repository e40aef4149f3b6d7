"""Small network helpers shared by the runtime and the development tools."""

from __future__ import annotations

import socket


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now.

    The port is only free at the time of the call: whoever binds it must retry with a new
    one if another process took it meanwhile.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def redact_url(url: str) -> str:
    """``url`` for logs and messages: its password, if any, replaced by ``***``."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    if parsed.password is None:
        return url
    user = f"{parsed.username}:***@" if parsed.username else ":***@"
    return parsed._replace(netloc=user + parsed.netloc.rsplit("@", 1)[1]).geturl()


#: Keys whose values are secrets wherever they appear in settings (SASL's password).
SECRET_KEYS = frozenset({"password"})


def redacted(settings: object) -> object:
    """``settings`` (a config dump: mappings, lists, strings) for printing: values of
    :data:`SECRET_KEYS` replaced by ``***``, and passwords in URLs by :func:`redact_url`."""
    if isinstance(settings, dict):
        return {k: "***" if k in SECRET_KEYS else redacted(v) for k, v in settings.items()}
    if isinstance(settings, list | tuple):
        return [redacted(v) for v in settings]
    if isinstance(settings, str) and "://" in settings:
        return redact_url(settings)
    return settings


#: The scheme of Sentinel URLs.
SENTINEL_SCHEME = "redis+sentinel"


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int, str | None, str | None]:
    """``(sentinels, service, db, username, password)`` of a Sentinel URL.

    Raises:
        ValueError: no Sentinel, a port that is not a number, or no service name.
    """
    rest = url.split("://", 1)[1]
    credentials, _, rest = rest.rpartition("@")
    hosts, _, path = rest.partition("/")
    username = password = None
    if credentials:
        user, _, secret = credentials.partition(":")
        username, password = (user or None), (secret or None)
    sentinels = []
    for address in hosts.split(","):
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"a Sentinel address is HOST:PORT, got {address!r}")
        sentinels.append((host, int(port)))
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("a Sentinel URL names the service: redis+sentinel://HOST:PORT/SERVICE")
    if db and not db.isdigit():
        raise ValueError(f"the database is a number, got {db!r}")
    return sentinels, service, int(db or 0), username, password
