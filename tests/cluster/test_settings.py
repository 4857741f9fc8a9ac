"""The [cluster] section: off by default, and a clear config error for a bad member list."""

from __future__ import annotations

from pathlib import Path

import pytest

from somabrain import config as soma_config
from somabrain.supervision import ConfigError


def _load(tmp_path: Path, text: str) -> soma_config.SomaConfig:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return soma_config.load(path)


def test_off_by_default() -> None:
    cluster = soma_config.load().cluster
    assert not cluster.enabled
    assert cluster.members == []


def test_a_cluster_config(tmp_path: Path) -> None:
    cfg = _load(
        tmp_path,
        '[node]\nname = "a"\n[cluster]\nnats_url = "nats://127.0.0.1:4222"\n'
        'members = ["a", "b"]\nrequest_timeout = 2.5\n',
    )
    assert cfg.cluster.enabled
    assert cfg.cluster.members == ["a", "b"]
    assert cfg.cluster.request_timeout == 2.5
    assert cfg.cluster.connect_timeout == 0  # wait for NATS for as long as it takes


def test_a_bad_nats_url_is_refused_without_showing_its_credentials(tmp_path: Path) -> None:
    text = '[node]\nname = "a"\n[cluster]\nnats_url = "nats://u:pw-secret@h:42x"\nmembers = ["a"]\n'
    with pytest.raises(ConfigError, match="the port is not a number") as caught:
        _load(tmp_path, text)
    assert "pw-secret" not in str(caught.value)


def test_connect_timeout_from_the_environment() -> None:
    cfg = soma_config.load(environ={"SOMA_CLUSTER__CONNECT_TIMEOUT": "30"})
    assert cfg.cluster.connect_timeout == 30.0


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[node]\nname = "a"\n[cluster]\nnats_url = "nats://x"\nmembers = ["b"]\n',
            "must include this node's node.name 'a'",
        ),
        ('[node]\nname = "a"\n[cluster]\nnats_url = "nats://x"\n', "needs its list of nodes"),
        ('[node]\nname = "a"\n[cluster]\nmembers = ["a", "a"]\n', "named twice"),
        ('[node]\nname = "a"\n[cluster]\nmembers = ["a.b"]\n', "is not a node name"),
        (
            '[node]\nname = "a.b"\n[cluster]\nnats_url = "nats://x"\nmembers = ["a"]\n',
            "cannot name a cluster member",
        ),
        ("[cluster]\nrequest_timeout = 0\n", "Expected `float` >"),
        ("[cluster]\nconnect_timeout = -1\n", "Expected `float` >= 0"),
        ("[cluster]\nconnect_timeout = nan\n", "Expected `float` >= 0"),
        (
            '[node]\nname = "a"\n[cluster]\nnats_url = "http://127.0.0.1:4222"\nmembers = ["a"]\n',
            "nats_url must be a nats:// URL with a host",
        ),
        (
            '[node]\nname = "a"\n[cluster]\nnats_url = "127.0.0.1:4222"\nmembers = ["a"]\n',
            "nats_url must be a nats:// URL with a host",
        ),
    ],
)
def test_bad_cluster_configs_are_config_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=r"cluster|node") as caught:
        _load(tmp_path, text)
    assert error in str(caught.value)


def test_env_override(tmp_path: Path) -> None:
    cfg = soma_config.load(environ={"SOMA_CLUSTER__REQUEST_TIMEOUT": "3"})
    assert cfg.cluster.request_timeout == 3.0
