"""The supervision tree as configuration: a TOML file plus ``SOMA_*`` environment overrides.

Shape (every value has a default; see ``somabrain/default.toml`` for the SomaBrain tree)::

    [node]
    mailbox_size = 1024          # default for actors that do not set their own
    overflow = "wait"            # or "raise"

    [tree]                       # the root supervisor
    strategy = "one_for_one"
    intensity = 3
    period = 5.0
    backoff = { initial = 0.05, max = 5.0, multiplier = 2.0, jitter = 0.2 }

    [tree.children.memory]       # children start in file order, stop in reverse
    kind = "dynamic"             # actor | pool | dynamic | supervisor
    actor = "somabrain.memory.actor:MemoryActor"
    idle_timeout = 300

An environment variable overrides one key: ``SOMA_`` then the key's path, sections joined by
a double underscore, e.g. ``SOMA_TREE__CHILDREN__PLANNERS__SIZE=8``. Its value is read as a
TOML value when it parses as one (``8``, ``true``, ``"x"``, ``[1, 2]``), else as a string.

Validation is msgspec's, so every error names the key at fault (``tree.children.planners.size``)
and, when the value came from the environment, the variable.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import msgspec
from msgspec import Meta

from ..actors import SomaError

__all__ = [
    "ActorNode",
    "BackoffConfig",
    "ChildNode",
    "ConfigError",
    "DynamicNode",
    "NodeSettings",
    "PoolNode",
    "SupervisorNode",
    "load_config",
]

T = TypeVar("T")

ENV_PREFIX = "SOMA_"

PositiveInt = Annotated[int, Meta(ge=1)]
Count = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(ge=0)]
RestartName = Literal["permanent", "transient", "temporary"]
StrategyName = Literal["one_for_one", "one_for_all", "rest_for_one"]
OverflowName = Literal["wait", "raise"]


class ConfigError(SomaError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""

    def __init__(self, key: str, message: str, source: str) -> None:
        self.key = key
        self.source = source
        # Without a key the file as a whole is at fault (missing, not TOML): the message names it.
        super().__init__(f"invalid config key {key!r} ({source}): {message}" if key else message)


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class BackoffConfig(_Section):
    initial: Seconds = 0.01
    max: Seconds = 5.0
    multiplier: Annotated[float, Meta(ge=1)] = 2.0
    jitter: Annotated[float, Meta(ge=0, le=1)] = 0.2


class NodeSettings(_Section):
    name: str = "soma"
    mailbox_size: PositiveInt = 1024
    overflow: OverflowName = "wait"
    #: Allocations between two young-generation collections of the cyclic garbage collector
    #: in a node process (Python's default is 700); 0 keeps the interpreter's setting.
    gc_threshold: Annotated[int, Meta(ge=0)] = 20_000
    #: Move everything alive once the node has started into the collector's permanent
    #: generation (``gc.freeze``), so full collections stop re-scanning it.
    gc_freeze: bool = True


class _Child(_Section, tag_field="kind"):
    restart: RestartName = "permanent"
    shutdown: Seconds | Literal["brutal_kill"] = 5.0


class ActorNode(_Child, tag="actor", kw_only=True):
    actor: str
    mailbox_size: PositiveInt | None = None
    overflow: OverflowName | None = None


class PoolNode(_Child, tag="pool", kw_only=True):
    actor: str
    size: Count = 2
    mailbox_size: PositiveInt | None = None
    overflow: OverflowName | None = None
    strategy: StrategyName = "one_for_one"
    intensity: Count = 3
    period: Annotated[float, Meta(gt=0)] = 5.0
    backoff: BackoffConfig = msgspec.field(default_factory=BackoffConfig)


class DynamicNode(_Child, tag="dynamic", kw_only=True):
    actor: str
    child_restart: RestartName = "transient"
    idle_timeout: Seconds = 300.0
    max_children: PositiveInt = 100_000
    mailbox_size: PositiveInt | None = None
    overflow: OverflowName | None = None
    intensity: Count = 10
    period: Annotated[float, Meta(gt=0)] = 10.0
    backoff: BackoffConfig = msgspec.field(default_factory=BackoffConfig)


class SupervisorNode(_Child, tag="supervisor", kw_only=True):
    strategy: StrategyName = "one_for_one"
    intensity: Count = 1
    period: Annotated[float, Meta(gt=0)] = 5.0
    backoff: BackoffConfig = msgspec.field(default_factory=BackoffConfig)
    shutdown: Seconds | Literal["brutal_kill"] = 30.0
    children: dict[str, ChildNode] = msgspec.field(default_factory=dict)


ChildNode = ActorNode | PoolNode | DynamicNode | SupervisorNode


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_env_overrides(
    data: dict[str, Any], environ: Mapping[str, str]
) -> dict[tuple[str, ...], str]:
    """Write ``SOMA_A__B=v`` into ``data["a"]["b"]``; returns which keys came from which var."""
    origins: dict[tuple[str, ...], str] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name[len(ENV_PREFIX) :]:
            # Only nested keys are config; SOMA_X alone is left for other uses.
            continue
        path = tuple(part.lower() for part in name[len(ENV_PREFIX) :].split("__"))
        if any(not part for part in path):
            raise ConfigError(".".join(path), "empty section in variable name", f"env {name}")
        target = data
        for part in path[:-1]:
            node = target.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(".".join(path), f"{part!r} is not a table", f"env {name}")
            target = node
        target[path[-1]] = _parse_env_value(raw)
        origins[path] = name
    return origins


def _error_key(error: msgspec.ValidationError, data: Any) -> tuple[str, str]:
    """Turn msgspec's "... - at `$.a.b`" into ("a.b", "...").

    msgspec writes ``[...]`` for a value inside a dict (it does not name the key); the only
    dicts of the tree config are ``children`` tables, so the key is found by validating each
    child on its own.
    """
    text = str(error)
    message, sep, where = text.rpartition(" - at `")
    if not sep:
        return "", text
    tokens = re.findall(r"\[[^\]]*\]|[^.\[\]]+", where.rstrip("`").removeprefix("$"))
    resolved: list[str] = []
    node = data
    for token in tokens:
        if token == "[...]" and isinstance(node, dict):
            for name, value in node.items():
                try:
                    msgspec.convert(value, ChildNode)
                except msgspec.ValidationError:
                    token = name
                    break
        elif token.startswith("[") and isinstance(node, list):
            token = token.strip("[]")
            index = int(token)
            node = node[index] if index < len(node) else None
            resolved.append(token)
            continue
        resolved.append(token)
        node = node.get(token) if isinstance(node, dict) else None
    # msgspec names an unknown field in the message, not the path: point at the field itself.
    if message.startswith("Object contains unknown field `"):
        resolved.append(message.split("`")[1])
    return ".".join(t for t in resolved if t), message


def load_config(
    schema: type[T],
    path: str | Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> T:
    """Read ``path`` (TOML) over ``base``, apply ``SOMA_*`` overrides, validate as ``schema``."""
    data: dict[str, Any] = _deep_copy(dict(base or {}))
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as fh:
                _deep_merge(data, tomllib.load(fh))
        except FileNotFoundError:
            raise ConfigError("", f"config file {path} not found", source) from None
        except OSError as exc:  # a directory, no permission
            raise ConfigError("", f"config file {path}: {exc.strerror}", source) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # the error has line, column
            raise ConfigError("", f"config file {path}: not valid TOML: {exc}", source) from None
    origins = apply_env_overrides(data, os.environ if environ is None else environ)
    try:
        return msgspec.convert(data, schema)
    except msgspec.ValidationError as exc:
        key, message = _error_key(exc, data)
        parts = tuple(key.split(".")) if key else ()
        for length in range(len(parts), 0, -1):
            if parts[:length] in origins:
                source = f"env {origins[parts[:length]]}"
                break
        if not key:  # the document as a whole
            message = f"invalid config ({source}): {message}"
        raise ConfigError(key, message, source) from None


def _deep_merge(into: dict[str, Any], other: Mapping[str, Any]) -> None:
    for key, value in other.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _deep_merge(into[key], value)
        else:
            into[key] = _deep_copy(value) if isinstance(value, dict) else value


def _deep_copy(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, dict) else v for k, v in value.items()}
