"""SomaBrain's configuration: the supervision tree plus one section per domain.

Defaults live in ``somabrain/default.toml`` (the SomaBrain tree); a user's file is merged over
them and ``SOMA_*`` variables override single keys (see ``somabrain.supervision.config``).
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from .supervision.config import NodeSettings, SupervisorNode, load_config

__all__ = ["SomaConfig", "default_config_data", "load"]


class SomaConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    tree: SupervisorNode = msgspec.field(default_factory=SupervisorNode)


def default_config_data() -> dict[str, Any]:
    text = resources.files("somabrain").joinpath("default.toml").read_text("utf-8")
    return tomllib.loads(text)


def load(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> SomaConfig:
    """Defaults, then the file at ``path`` (if any), then ``SOMA_*`` overrides."""
    return load_config(SomaConfig, path, environ=environ, base=default_config_data())
