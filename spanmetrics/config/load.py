"""Load and validate topology YAML; errors name the key path."""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from spanmetrics.config.expand import ExpansionError, expand
from spanmetrics.config.model import RETIRED_KEYS, Topology


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
_PATH_FIRST = re.compile(
    r"^(source|spanmetrics|sinks|state|derive|views|span_filters|span_names|budgets)[\w.\[\]]*: "
)


#: A message of a check on a whole block that names the key inside the block it is about.
_RELATIVE_PATH = re.compile(r"^([a-z_]+)([\w.\[\]]*): (.*)$", re.S)


def _describe(error: Any) -> str:
    msg = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"] and _PATH_FIRST.match(msg):
        return msg
    relative = _RELATIVE_PATH.match(msg)
    if relative and error["loc"]:
        model = _model_at((*error["loc"], ""))
        if model is not None and relative.group(1) in model.model_fields:
            path = _key_path((*tuple(error["loc"]), relative.group(1))) + relative.group(2)
            return f"{path}: {relative.group(3)}"
    if error["type"] == "extra_forbidden":
        msg = _unknown_key(tuple(error["loc"]))
    elif error["type"] in ("literal_error", "missing", "value_error"):
        pass  # these messages already show the value, or there is none
    elif "input" in error and not isinstance(error["input"], dict | list):
        msg = f"{msg} (got {error['input']!r})"
    return f"{_key_path(tuple(error['loc']))}: {msg}"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config model that holds the key at ``loc`` (its last part)."""
    model: type[BaseModel] | None = Topology
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue  # an item of a list: the list's item model, found below
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field is not None else None
    return model


def _model_in(annotation: object) -> type[BaseModel] | None:
    """The model class inside an annotation such as ``X | None`` or ``tuple[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _unknown_key(loc: tuple[int | str, ...]) -> str:
    """ "unknown key", with the key that replaced a retired one, or the closest known key."""
    key = str(loc[-1])
    if key in RETIRED_KEYS:
        return f"retired key: use {RETIRED_KEYS[key]}"
    model = _model_at(loc)
    if model is not None:
        close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean {close[0]!r}?"
    return "unknown key"


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
    """Read a topology file, expand ``${env:NAME}`` and ``${file:PATH}`` in its values,
    and validate it.

    Raises:
        ConfigError: unreadable file, invalid YAML, or invalid keys and values.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(source, [f"cannot read file: {err.strerror}"]) from None
    except UnicodeDecodeError as err:
        # Found by tests/fuzz/fuzz_topology.py: this was a traceback.
        raise ConfigError(
            source, [f"not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start}"]
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(source, [f"invalid YAML: {err}"]) from None
    try:
        document = expand(document)  # ${env:NAME} and ${file:PATH}, as in Collector configs
    except ExpansionError as err:
        raise ConfigError(source, [str(err)]) from None
    return parse_topology(document, source)
