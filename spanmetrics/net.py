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
