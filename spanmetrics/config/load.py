"""Load and validate topology YAML; errors name the key path."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from spanmetrics.config.model import Topology


class ConfigError(Exception):
    """A topology that cannot be used. Each line of the message names a key path."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid topology\n" + "\n".join(f"  {p}" for p in problems))


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


#: A message that already starts with the key path it is about (cross-key checks).
_PATH_FIRST = re.compile(r"^(source|spanmetrics|sinks|state)[\w.\[\]]*: ")


def _describe(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"] and _PATH_FIRST.match(msg):
        return msg
    if error["type"] == "extra_forbidden":
        msg = "unknown key"
    elif error["type"] in ("literal_error", "missing", "value_error"):
        pass  # these messages already show the value, or there is none
    elif "input" in error and not isinstance(error["input"], dict | list):
        msg = f"{msg} (got {error['input']!r})"
    return f"{_key_path(tuple(error['loc']))}: {msg}"


def parse_topology(document: object, source: str = "<topology>") -> Topology:
    """Validate an already-parsed YAML document.

    Raises:
        ConfigError: with one line per problem, each naming its key path.
    """
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError(source, ["(top level): a topology is a mapping of keys"])
    try:
        return Topology.model_validate(document)
    except ValidationError as err:
        raise ConfigError(source, [_describe(e) for e in err.errors()]) from None


def load_topology(path: str | Path) -> Topology:
    """Read and validate a topology file.

    Raises:
        ConfigError: unreadable file, invalid YAML, or invalid keys and values.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(source, [f"cannot read file: {err.strerror}"]) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"invalid YAML: {err}"]) from None
    return parse_topology(document, source)
