"""Config checks of back-end server URLs (``somabrain._urls``), through the config that reads
them: every section that names a server refuses a URL it cannot use, naming the setting and
never repeating the URL (it may hold a password)."""

from __future__ import annotations

import pytest

from somabrain import config
from somabrain.supervision import ConfigError


@pytest.mark.parametrize(
    ("variable", "url", "message"),
    [
        ("SOMA_AUDIT__REDIS_URL", "http://:s3cret@cache:6379/0", "redis_url must be a redis://"),
        ("SOMA_AUDIT__REDIS_URL", "redis://:s3cret@cache:port/0", "port is not a number"),
        ("SOMA_AUDIT__REDIS_URL", "redis://:s3cret@cache:6379/x", "a database number"),
        ("SOMA_EDGE__RATE_LIMIT__REDIS_URL", "redis://:s3cret@/0", "with a host"),
        ("SOMA_MEMORY__POSTGRES_URL", "mysql://u:s3cret@db/soma", "a postgresql:// URL"),
        ("SOMA_CLUSTER__NATS_URL", "http://u:s3cret@nats:4222", "a nats:// URL with a host"),
    ],
)
def test_a_server_url_it_cannot_use_is_refused_without_repeating_it(
    variable: str, url: str, message: str
) -> None:
    environ = {variable: url}
    if "CLUSTER" in variable:
        environ["SOMA_CLUSTER__MEMBERS"] = '["a"]'
    with pytest.raises(ConfigError) as caught:
        config.load(environ=environ)
    assert message in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_a_postgres_url_may_name_a_unix_socket_instead_of_a_host() -> None:
    cfg = config.load(environ={"SOMA_MEMORY__POSTGRES_URL": "postgresql:///soma?host=/run/pg"})
    assert cfg.memory.postgres_url.endswith("host=/run/pg")
