"""compose.yaml and the Dockerfile cannot run here (no Docker engine): check that what they say
matches what the code reads. Every SomaBrain member's SOMA_* variables load as a valid config,
and the hosts, ports, users and databases they name are the services of the file."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml

from somabrain import config as soma_config
from somabrain.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
_VARIABLE = re.compile(r"\$\{(\w+)(?::([-?])([^}]*))?\}")
GIVEN = {"SOMABRAIN_SECRET": "s" * 64}  # what an operator must set; the rest have defaults


def interpolate(value: Any, given: dict[str, str]) -> Any:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""
    if isinstance(value, dict):
        return {k: interpolate(v, given) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, given) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, kind, rest = match.groups()
        if name in given:
            return given[name]
        if kind == "-":
            return rest
        raise KeyError(f"{name} must be set: {rest}")

    return _VARIABLE.sub(one, value)


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return dict(interpolate(document["services"], GIVEN))


def members(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if s.get("build") == "."}


def test_the_secret_is_required() -> None:
    document = yaml.safe_load((ROOT / "compose.yaml").read_text())
    with pytest.raises(KeyError, match="SOMABRAIN_SECRET"):
        interpolate(document["services"], {})


def test_every_member_loads_and_names_the_services(services: dict[str, Any]) -> None:
    nodes = members(services)
    assert len(nodes) == 2
    names = set()
    for service in nodes.values():
        env = {k: str(v) for k, v in service["environment"].items()}
        cfg = soma_config.load(None, environ=env)
        names.add(cfg.node.name)
        assert set(cfg.cluster.members) == {"a", "b"}
        assert cfg.cluster.failover
        assert len(cfg.auth.secret) >= 32

        db = urllib.parse.urlsplit(cfg.memory.postgres_url)
        postgres = services[db.hostname]
        assert db.port == 5432
        assert db.username == postgres["environment"]["POSTGRES_USER"]
        assert db.password == postgres["environment"]["POSTGRES_PASSWORD"]
        assert db.path.lstrip("/") == postgres["environment"]["POSTGRES_DB"]

        host, port = cfg.kafka.bootstrap.split(":")
        assert f"PLAINTEXT://{host}:{port}" in services[host]["environment"][
            "KAFKA_ADVERTISED_LISTENERS"
        ].split(",")

        redis = urllib.parse.urlsplit(cfg.audit.redis_url)
        assert redis.hostname in services and redis.port == 6379
        assert "--appendfsync" in services[redis.hostname]["command"]

        limits = urllib.parse.urlsplit(cfg.edge.rate_limit.redis_url)
        assert limits.hostname in services and limits.port == 6379
        assert limits.hostname != redis.hostname  # no fsync per request: not the audit Redis
        assert "always" not in services[limits.hostname]["command"]

        nats = urllib.parse.urlsplit(cfg.cluster.nats_url)
        assert nats.hostname in services
        assert str(nats.port) in services[nats.hostname]["command"]
    assert names == {"a", "b"}


def test_members_listen_where_their_ports_and_health_checks_point(
    services: dict[str, Any],
) -> None:
    published = set()
    for service in members(services).values():
        args = build_parser().parse_args(service["command"])
        assert args.host == "0.0.0.0"
        (mapping,) = service["ports"]
        outside, inside = mapping.split(":")
        assert int(inside) == args.port
        published.add(outside)
        assert f":{args.port}/readyz" in " ".join(service["healthcheck"]["test"])
        assert set(service["depends_on"]) <= set(services)
    assert len(published) == 2


def test_the_image_runs_the_somabrain_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    (entrypoint,) = re.findall(r"^ENTRYPOINT (.+)$", dockerfile, re.M)
    assert yaml.safe_load(entrypoint) == ["somabrain"]
    (cmd,) = re.findall(r"^CMD (.+)$", dockerfile, re.M)
    build_parser().parse_args(yaml.safe_load(cmd))
    for copied in re.findall(r"^COPY (\S+) ", dockerfile, re.M):
        assert (ROOT / copied).exists(), copied
    (policies,) = re.findall(r"SOMA_GOVERNANCE__POLICIES_DIR=(\S+)", dockerfile)
    assert policies == "/app/policies" and (ROOT / "policies").is_dir()
    assert ".venv/" in (ROOT / ".dockerignore").read_text().split()
