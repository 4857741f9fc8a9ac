"""The tree config: TOML, SOMA_* overrides, and errors that name the key at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from somabrain import config as soma_config
from somabrain.supervision import ConfigError, SupervisorNode, load_config
from somabrain.supervision.config import ActorNode, DynamicNode, PoolNode

from .helpers import Config

TREE = """
[node]
mailbox_size = 64

[tree]
strategy = "rest_for_one"
intensity = 2

[tree.children.store]
kind = "actor"
actor = "pkg.mod:Store"

[tree.children.memory]
kind = "dynamic"
actor = "pkg.mod:Memory"
idle_timeout = 30

[tree.children.workers]
kind = "supervisor"
strategy = "one_for_all"

[tree.children.workers.children.planners]
kind = "pool"
actor = "pkg.mod:Planner"
size = 4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "soma.toml"
    path.write_text(text)
    return path


def test_a_tree_loads_with_children_in_file_order(tmp_path: Path) -> None:
    config = load_config(Config, write(tmp_path, TREE), environ={})
    assert config.node.mailbox_size == 64
    assert config.tree.strategy == "rest_for_one"
    assert list(config.tree.children) == ["store", "memory", "workers"]
    assert isinstance(config.tree.children["store"], ActorNode)
    assert isinstance(config.tree.children["memory"], DynamicNode)
    workers = config.tree.children["workers"]
    assert isinstance(workers, SupervisorNode)
    planners = workers.children["planners"]
    assert isinstance(planners, PoolNode) and planners.size == 4


def test_environment_overrides_single_keys(tmp_path: Path) -> None:
    environ = {
        "SOMA_TREE__CHILDREN__WORKERS__CHILDREN__PLANNERS__SIZE": "8",
        "SOMA_TREE__BACKOFF__MAX": "1.5",
        "SOMA_NODE__OVERFLOW": "raise",  # a bare word is read as a string
        "SOMA_UNRELATED": "ignored",
    }
    config = load_config(Config, write(tmp_path, TREE), environ=environ)
    workers = config.tree.children["workers"]
    assert isinstance(workers, SupervisorNode)
    assert workers.children["planners"].size == 8  # type: ignore[union-attr]
    assert config.tree.backoff.max == 1.5
    assert config.node.overflow == "raise"


@pytest.mark.parametrize(
    ("text", "environ", "key", "source", "message"),
    [
        (
            TREE.replace("size = 4", "size = -1"),
            {},
            "tree.children.workers.children.planners.size",
            "soma.toml",
            ">= 0",
        ),
        (
            TREE.replace("intensity = 2", "intensty = 2"),
            {},
            "tree.intensty",
            "soma.toml",
            "unknown field",
        ),
        (
            TREE,
            {"SOMA_TREE__CHILDREN__MEMORY__IDLE_TIMEOUT": "soon"},
            "tree.children.memory.idle_timeout",
            "env SOMA_TREE__CHILDREN__MEMORY__IDLE_TIMEOUT",
            "got `str`",
        ),
        (
            TREE.replace('kind = "pool"', 'kind = "swarm"'),
            {},
            "tree.children.workers.children.planners.kind",
            "soma.toml",
            "Invalid value 'swarm'",
        ),
        (
            TREE.replace('strategy = "one_for_all"', 'strategy = "all_for_one"'),
            {},
            "tree.children.workers.strategy",
            "soma.toml",
            "Invalid enum value",
        ),
        (
            TREE,
            {"SOMA_NODE__MAILBOX_SIZE": "0"},
            "node.mailbox_size",
            "env SOMA_NODE__MAILBOX_SIZE",
            ">= 1",
        ),
    ],
)
def test_errors_name_the_key_and_where_it_came_from(
    tmp_path: Path, text: str, environ: dict[str, str], key: str, source: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(Config, write(tmp_path, text), environ=environ)
    assert info.value.key == key
    assert source in info.value.source
    assert message in str(info.value)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as info:
        load_config(Config, missing, environ={})
    assert str(info.value) == f"config file {missing} not found"
    broken = write(tmp_path, "[node]\nmailbox_size = 8\n[tree\n")
    with pytest.raises(ConfigError) as info:
        load_config(Config, broken, environ={})
    assert str(info.value).startswith(f"config file {broken}: not valid TOML: ")
    assert "line 3, column 6" in str(info.value)  # where, from the TOML parser
    with pytest.raises(ConfigError) as info:
        load_config(Config, tmp_path, environ={})
    assert str(info.value) == f"config file {tmp_path}: Is a directory"


def test_the_shipped_defaults_are_valid() -> None:
    config = soma_config.load(environ={})
    assert config.tree.intensity >= 1
