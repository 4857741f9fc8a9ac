"""Rate limits shared through Redis (``edge.rate_limit.redis_url``), against a real
redis-server: the buckets, two nodes on one budget, the fallback to node-local buckets while
Redis is down, ``/health``, the settings. redis-py's client is asyncio-only."""

from __future__ import annotations

import logging
from pathlib import Path

import anyio
import httpx
import pytest

from somabrain import config as soma_config
from somabrain.config import TenantRateLimit
from somabrain.edge.shared_ratelimit import SharedRateLimiter, shown_redis_url
from somabrain.node import run_dev_node
from somabrain.supervision import ConfigError
from tests.edge.test_app import error_of, harness
from tests.servers import RedisServer

pytestmark = pytest.mark.anyio

#: Generous: these tests are about what is decided, not how fast (2 shared cores, a first
#: call that connects and loads the script).
TIMEOUT = 2.0


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def limiter(url: str, rate: float, burst: int, **kwargs: object) -> SharedRateLimiter:
    kwargs.setdefault("timeout", TIMEOUT)
    return SharedRateLimiter(url, rate, burst, **kwargs)  # type: ignore[arg-type]


async def takes(limit: SharedRateLimiter, tenant: str, n: int) -> list[float]:
    return [await limit.take(tenant) for _ in range(n)]


# ----------------------------------------------------------------------------- the buckets


async def test_burst_then_refusal_with_the_time_to_the_next_token(
    redis_server: RedisServer,
) -> None:
    shared = limiter(redis_server.url, rate=0.5, burst=3)
    try:
        assert await takes(shared, "acme", 3) == [0.0, 0.0, 0.0]
        wait = await shared.take("acme")
        assert wait == pytest.approx(2.0, abs=0.5)  # one token at 0.5/s, minus the time spent
        assert await shared.take("other") == 0.0  # every tenant has its own bucket
        assert shared.shared and shared.limited == 1 and shared.local_decisions == 0
        assert len(shared.local) == 0  # the node-local buckets were not used
    finally:
        await shared.aclose()


async def test_concurrent_takes_share_script_calls_and_the_budget(
    redis_server: RedisServer,
) -> None:
    import redis.asyncio as aioredis

    shared = limiter(redis_server.url, rate=0.001, burst=20)
    client = aioredis.from_url(redis_server.url)
    waits: list[float] = []

    async def one(tenant: str) -> None:
        waits.append(await shared.take(tenant))

    try:
        await shared.take("warm-up")  # connected, the script loaded
        await client.config_resetstat()
        async with anyio.create_task_group() as tg:
            for i in range(60):
                tg.start_soon(one, "acme" if i % 2 else "other")
        stats = await client.info("commandstats")
        calls = stats["cmdstat_evalsha"]["calls"]
        # Each of the two tenants had 20 tokens for its 30 takes.
        assert sum(w == 0.0 for w in waits) == 40 and len(waits) == 60
        assert calls < 60  # takes in flight together went in one call
        assert shared.shared and shared.local_decisions == 0
    finally:
        await client.aclose()
        await shared.aclose()


async def test_a_take_whose_request_is_gone_does_not_make_redis_down(
    redis_server: RedisServer,
) -> None:
    import redis.asyncio as aioredis

    shared = limiter(redis_server.url, rate=1.0, burst=100, timeout=5.0)
    client = aioredis.from_url(redis_server.url)
    waits: list[float] = []

    async def take_until(deadline: float) -> None:  # a request whose client goes away
        with anyio.move_on_after(deadline):
            await shared.take("acme")

    async def follower() -> None:
        waits.append(await shared.take("acme"))

    try:
        await shared.take("warm-up")
        await client.execute_command("CLIENT", "PAUSE", "1000", "ALL")  # calls hang meanwhile
        async with anyio.create_task_group() as tg:
            tg.start_soon(take_until, 0.1)  # the call in flight
            await anyio.sleep(0.02)
            tg.start_soon(take_until, 0.3)  # leads the next batch once the first is gone...
            await anyio.sleep(0.02)
            for _ in range(4):
                tg.start_soon(follower)  # ...gathered in that batch
        # The second batch's sender went away mid-call: its other takes were decided by the
        # node's own bucket, and nothing said Redis was down.
        assert waits == [0.0] * 4 and shared.local_decisions == 4
        assert shared.shared and shared.outages == 0
        assert await shared.take("acme") == 0.0 and shared.local_decisions == 4
    finally:
        await client.aclose()
        await shared.aclose()


async def test_buckets_refill_and_idle_ones_expire(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    shared = limiter(redis_server.url, rate=20.0, burst=2, prefix="rl:")
    client = aioredis.from_url(redis_server.url)
    try:
        assert await takes(shared, "acme", 2) == [0.0, 0.0]
        wait = await shared.take("acme")
        assert 0 < wait <= 0.05
        await anyio.sleep(wait + 0.02)
        assert await shared.take("acme") == 0.0  # refilled on the server's clock
        # The key lives until the bucket would be full again: an idle tenant costs nothing.
        assert 0 < await client.pttl("rl:acme") <= 101
        await anyio.sleep(0.15)
        assert await client.exists("rl:acme") == 0
        assert await takes(shared, "acme", 2) == [0.0, 0.0]  # a missing key is a full bucket
    finally:
        await client.aclose()
        await shared.aclose()


async def test_overrides_reload_and_exempt_tenants(redis_server: RedisServer) -> None:
    import redis.asyncio as aioredis

    tenants = {"slow": TenantRateLimit(rate=0.5, burst=1), "free": TenantRateLimit(enabled=False)}
    shared = limiter(redis_server.url, rate=1.0, burst=5, tenants=tenants)
    client = aioredis.from_url(redis_server.url)
    try:
        assert await shared.take("slow") == 0.0
        assert await shared.take("slow") == pytest.approx(2.0, abs=0.5)
        assert await takes(shared, "free", 50) == [0.0] * 50
        assert await client.exists("soma:ratelimit:free") == 0  # never asked Redis
        assert await takes(shared, "acme", 1) == [0.0]  # 4 tokens left of 5
        # A reload applies at once; the bucket keeps its level, capped at the new burst.
        shared.configure(1.0, 2, tenants={})
        assert await takes(shared, "acme", 2) == [0.0, 0.0]
        assert await shared.take("acme") > 0
        assert await shared.take("slow") > 0  # now the node-wide 1/s, its bucket still empty
    finally:
        await client.aclose()
        await shared.aclose()


async def test_two_nodes_share_one_budget(redis_server: RedisServer) -> None:
    a = limiter(redis_server.url, rate=0.5, burst=4)
    b = limiter(redis_server.url, rate=0.5, burst=4)
    try:
        waits = [await (a if i % 2 else b).take("acme") for i in range(8)]
        assert waits[:4] == [0.0] * 4 and all(w > 0 for w in waits[4:])
        assert a.limited + b.limited == 4
    finally:
        await a.aclose()
        await b.aclose()


# ----------------------------------------------------------------------------- Redis down


async def test_redis_down_falls_back_to_local_buckets_and_comes_back(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    shared = limiter(redis_server.url, rate=0.5, burst=3, probe_interval=3600.0)
    try:
        assert await takes(shared, "acme", 3) == [0.0, 0.0, 0.0]
        assert await shared.take("acme") > 0
        redis_server.stop()
        with caplog.at_level(logging.WARNING, "somabrain.edge.ratelimit"):
            # The node-local bucket decides: its own burst of 3, then refusals.
            waits = await takes(shared, "acme", 5)
            assert waits[:3] == [0.0] * 3 and waits[3] > 0 and waits[4] > 0
            assert not shared.shared and shared.local_decisions == 5
            health = await shared.health()
            assert health["status"] == "degraded" and health["shared"] is False
            assert health["error"] and health["outages"] == 1
        outage = [r for r in caplog.records if "node-local" in r.getMessage()]
        assert len(outage) == 1  # once per outage, not once per request
        redis_server.start()
        health = await shared.health()  # /health asks Redis: shared again at once
        assert health["status"] == "ok" and health["shared"] is True and "error" not in health
        # Redis restarted without its script cache (NOSCRIPT): loaded again, and the budget
        # is Redis's again (its bucket survived in the append-only file: still empty).
        assert await shared.take("acme") > 0
        assert shared.local_decisions == 5
        assert any("shared again" in r.getMessage() for r in caplog.records)
    finally:
        await shared.aclose()


async def test_redis_down_from_the_start_and_probes(redis_server: RedisServer) -> None:
    url = redis_server.url
    redis_server.stop()
    shared = limiter(url, rate=1.0, burst=2, probe_interval=0.05)
    try:
        assert await takes(shared, "acme", 2) == [0.0, 0.0]
        assert not shared.shared
        redis_server.start()
        await anyio.sleep(0.06)
        assert await shared.take("acme") == 0.0  # this one probed: Redis's bucket, full
        assert shared.shared and shared.local_decisions == 2
    finally:
        await shared.aclose()


async def test_credentials_never_shown(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_server.url)
    await client.config_set("requirepass", "right-secret")
    await client.aclose()
    host = f"127.0.0.1:{redis_server.port}"
    url = f"redis://soma:wrong-secret@{host}/0?password=wrong-secret"
    assert shown_redis_url(url) == f"redis://***@{host}/0"
    shared = limiter(url, rate=1.0, burst=1)
    try:
        with caplog.at_level(logging.WARNING, "somabrain.edge.ratelimit"):
            assert await shared.take("acme") == 0.0  # refused credentials: the local bucket
            health = await shared.health()
        assert health["status"] == "degraded" and health["url"] == f"redis://***@{host}/0"
        assert "wrong-secret" not in repr(health) and "wrong-secret" not in caplog.text
        assert "does not answer" in caplog.text
    finally:
        await shared.aclose()
    good = limiter(f"redis://:right-secret@{host}/0", rate=1.0, burst=1)
    try:
        assert await good.take("acme") == 0.0 and good.shared
    finally:
        await good.aclose()


# ----------------------------------------------------------------------------- the edge


def shared_env(url: str, **more: str) -> dict[str, str]:
    return {
        "SOMA_EDGE__RATE_LIMIT__REDIS_URL": url,
        "SOMA_EDGE__RATE_LIMIT__REDIS_TIMEOUT": str(TIMEOUT),
        "SOMA_EDGE__RATE_LIMIT__RATE": "0.5",
        "SOMA_EDGE__RATE_LIMIT__BURST": "4",
        **more,
    }


async def recall(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post("/memory/recall", json={"query": "x"})


async def test_two_edges_on_one_redis_refuse_after_burst_in_total(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = shared_env(redis_server.url)
    for node in ("a", "b"):
        (tmp_path / node).mkdir()
    async with (
        harness(tmp_path / "a", environ=env) as a,
        harness(tmp_path / "b", environ=env) as b,
        a.client() as to_a,
        b.client() as to_b,
    ):
        try:
            assert isinstance(a.app.limiter, SharedRateLimiter)
            responses = [await recall(to_a if i % 2 else to_b) for i in range(8)]
            assert [r.status_code for r in responses] == [200] * 4 + [429] * 4
            refused = responses[-1]
            assert error_of(refused)["code"] == "rate_limited"
            assert refused.headers["retry-after"] in ("1", "2")
            assert a.app.metrics.rate_limited == b.app.metrics.rate_limited == {"acme": 2}
            async with a.client("other") as other:  # per tenant
                assert (await recall(other)).status_code == 200
            health = (await to_a.get("/health")).json()
            assert health["components"]["rate_limit"]["status"] == "ok"
            assert health["components"]["rate_limit"]["shared"] is True
        finally:
            await a.app.limiter.aclose()
            await b.app.limiter.aclose()


async def test_edge_answers_while_redis_is_down_and_health_says_so(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    env = shared_env(redis_server.url, SOMA_EDGE__RATE_LIMIT__BURST="100")
    async with (
        harness(tmp_path, environ=env) as h,
        h.client() as client,
        h.client(scopes=("metrics",)) as scraper,
    ):
        try:
            assert (await recall(client)).status_code == 200
            health = (await client.get("/health")).json()
            assert health["status"] == "ok"
            assert health["components"]["rate_limit"]["kind"] == "redis"
            redis_server.stop()
            assert [(await recall(client)).status_code for _ in range(5)] == [200] * 5
            health = (await client.get("/health")).json()
            assert health["status"] == "degraded"
            component = health["components"]["rate_limit"]
            assert component["status"] == "degraded" and component["shared"] is False
            assert component["local_decisions"] >= 1
            scraped = (await scraper.get("/metrics")).text
            assert "soma_rate_limit_shared 0" in scraped.splitlines()
            assert "soma_rate_limit_outages_total 1" in scraped.splitlines()
            redis_server.start()
            health = (await client.get("/health")).json()
            assert health["status"] == "ok"
            assert health["components"]["rate_limit"]["shared"] is True
            assert (await recall(client)).status_code == 200
            assert "soma_rate_limit_shared 1" in (await scraper.get("/metrics")).text.splitlines()
        finally:
            await h.app.limiter.aclose()


async def test_local_limits_show_in_health(tmp_path: Path) -> None:
    async with harness(tmp_path) as h, h.client() as client:
        health = (await client.get("/health")).json()
        assert health["components"]["rate_limit"] == {"kind": "local", "status": "ok"}


async def test_reload_keeps_the_redis_settings_until_a_restart(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = tmp_path / "soma.toml"
    config.write_text(
        '[edge.rate_limit]\nredis_url = "redis://127.0.0.1:1/0"\nrate = 0.5\nburst = 2\n'
    )
    env = shared_env(redis_server.url)
    async with harness(tmp_path, environ=env) as h, h.client(scopes=("admin",)) as admin:
        try:
            h.app.system.resources["config_path"] = config
            r = await admin.post("/admin/reload", json={})
            assert (
                "edge: rate_limit.redis_url, rate_limit.redis_timeout apply after a node restart"
                in r.json()["changes"]
            )
            assert "127.0.0.1:1" not in r.text
            rate_limit = h.app.config.edge.rate_limit
            assert rate_limit.redis_url == redis_server.url and rate_limit.burst == 2
            assert [(await recall(admin)).status_code for _ in range(3)] == [200, 200, 429]
        finally:
            await h.app.limiter.aclose()


# ----------------------------------------------------------------------------- settings


def test_redis_url_is_checked_without_repeating_it(tmp_path: Path) -> None:
    path = tmp_path / "soma.toml"
    ok = "rediss://:s3cret@cache.internal:6380/2"
    path.write_text(f'[edge.rate_limit]\nredis_url = "{ok}"\nredis_timeout = 0.02\n')
    rl = soma_config.load(path, environ={}).edge.rate_limit
    assert rl.redis_url == ok and rl.redis_timeout == 0.02
    for url, message in [
        ("http://:s3cret@cache:6379/0", "must be a redis:// URL with a host (or rediss://)"),
        ("redis://:s3cret@:6379/0", "with a host"),
        ("redis://:s3cret@cache:99999/0", "the port is not a number"),
        ("redis://:s3cret@cache:port/0", "the port is not a number"),
        ("redis://:s3cret@cache:6379/zero", "database number"),
    ]:
        path.write_text(f'[edge.rate_limit]\nredis_url = "{url}"\n')
        with pytest.raises(ConfigError) as info:
            soma_config.load(path, environ={})
        assert info.value.key == "edge.rate_limit" and message in str(info.value)
        assert "s3cret" not in str(info.value)
    for timeout in ("0", "-1", "11"):
        env = {"SOMA_EDGE__RATE_LIMIT__REDIS_TIMEOUT": timeout}
        with pytest.raises(ConfigError) as info:
            soma_config.load(None, environ=env)
        assert info.value.key == "edge.rate_limit.redis_timeout"


def test_trio_refuses_shared_rate_limits_at_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "soma.toml"
    config.write_text('[edge.rate_limit]\nredis_url = "redis://:s3cret@127.0.0.1:6379/0"\n')
    code = run_dev_node(
        config_path=str(config), port=0, data_dir=str(tmp_path / "data"), backend="trio"
    )
    err = capsys.readouterr().err
    assert code == 2 and "edge.rate_limit.redis_url" in err and "asyncio" in err
    assert "s3cret" not in err
