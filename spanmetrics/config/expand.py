"""``${env:NAME}`` and ``${file:PATH}`` in topology values, as in Collector configs.

So that passwords come from Kubernetes Secrets (environment variables or mounted files)
and never sit in the topology file:

- ``${env:NAME}``: the variable's value; ``${env:NAME:-default}`` when it may be unset;
- ``${file:PATH}``: the file's content, without a trailing newline;
- ``$$`` is a literal ``$``.

A reference to an unset variable, or to a file that is unreadable, not a regular file, not
UTF-8 or over 1 MiB, is an error naming the key path.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path

#: ``$$``, or ``${env:NAME}``, ``${env:NAME:-default}``, ``${file:PATH}``.
_REFERENCE = re.compile(r"\$\$|\$\{(env|file):([^}:]+)(?::-([^}]*))?\}")


#: Largest file ``${file:PATH}`` reads: secrets and certificates are small.
MAX_FILE_BYTES = 1 << 20


class ExpansionError(ValueError):
    """A reference that cannot be expanded; the message starts with the key path."""


def expand(document: object, environ: Mapping[str, str] | None = None) -> object:
    """``document`` with every reference in its strings replaced (keys are left alone)."""
    env = os.environ if environ is None else environ
    return _expand(document, "", env)


def _expand(node: object, path: str, env: Mapping[str, str]) -> object:
    if isinstance(node, dict):
        return {k: _expand(v, f"{path}.{k}" if path else str(k), env) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]", env) for i, v in enumerate(node)]
    if isinstance(node, str) and "$" in node:
        return _REFERENCE.sub(lambda m: _value(m, path or "(top level)", env), node)
    return node


def _value(match: re.Match[str], path: str, env: Mapping[str, str]) -> str:
    if match.group(0) == "$$":
        return "$"
    kind, name, default = match.groups()
    if kind == "env":
        value = env.get(name)
        if value is None:
            if default is not None:
                return default
            raise ExpansionError(f"{path}: ${{env:{name}}} is not set in the environment")
        return value
    reference = f"{path}: ${{file:{name}}}"
    try:
        file = Path(name)
        status = file.stat()
        # A secret is a small regular file; /dev/zero or a FIFO would never end.
        if not stat.S_ISREG(status.st_mode):
            raise ExpansionError(f"{reference} is not a regular file")
        if status.st_size > MAX_FILE_BYTES:
            raise ExpansionError(f"{reference} is larger than {MAX_FILE_BYTES} bytes")
        return file.read_text(encoding="utf-8").removesuffix("\n")
    except OSError as err:
        raise ExpansionError(f"{reference} cannot be read: {err.strerror}") from None
    except UnicodeDecodeError:
        raise ExpansionError(f"{reference} is not UTF-8 text") from None
