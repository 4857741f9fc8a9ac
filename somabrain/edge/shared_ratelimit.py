"""Per-tenant token buckets in Redis, shared by every node pointing at the same server.

Why: in a cluster, the member an agent called applies the rate limit (docs/cluster.md). Behind
a load balancer that spreads a tenant over N members, node-local buckets let the tenant through
at N times its rate. With ``edge.rate_limit.redis_url`` set, a tenant's bucket is a Redis hash
and each request takes its token there: ``EVALSHA`` of the script below.

Concurrent requests share one call (group commit, as the memory logs do): the first request
that finds no call in flight sends the tokens of every request gathered so far as one script
call, with one key per request; the requests arriving meanwhile gather into the next call. The
cost of a call is mostly redis-py's, per command, not Redis's per key: at 32 concurrent
callers one call per batch takes ~3x the tokens per second of one call per request
(``benchmarks/ratelimit.py``). The keys of one call must live on one server: a single Redis, or
for Redis Cluster a hash tag in ``redis_prefix`` (``{soma}:ratelimit:``).

For each key the script reads the bucket, refills it by the time elapsed *on the Redis server's
clock* (``TIME``), takes the token or answers how long until one is there, writes the bucket
back and expires its key once it would be full again. So:

* two nodes never take the same token: Redis runs a script alone;
* the nodes' clocks do not matter, only the server's;
* an idle tenant costs nothing: its key is gone once the bucket is full (a missing key is a
  full bucket, as in the node-local buckets).

Rate and burst travel with each call, from the config of the node that got the request: a
per-tenant override or a reload applies at once, and a bucket keeps its level, capped at the
new burst (as the node-local ones do). Members should run the same ``[edge.rate_limit]``;
if they differ, each request is judged by the limits of the member that received it.

Redis unreachable or slow: a call that fails or takes longer than ``redis_timeout`` is decided
by the node-local bucket (``RateLimiter``), so the limiter never fails a request nor makes it
wait longer than that. The limiter then stays local, so that no request waits on a Redis that is
down, except one call per ``probe_interval`` that tries Redis again (``/health`` tries it too);
the first that answers makes the buckets shared again. One warning when an outage starts, one
line when it ends; meanwhile ``/health`` shows the ``rate_limit`` component ``degraded``. During
an outage each node limits on its own: a tenant spread over N nodes gets up to N times its rate.

The URL's credentials never leave this module: logs, errors and ``/health`` show ``shown_url``.
redis-py's asyncio client needs the asyncio backend (the node refuses the setting on trio).
"""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

import anyio

from .ratelimit import Limit, LimitOverride, RateLimiter

__all__ = ["SCRIPT", "SharedRateLimiter", "shown_redis_url"]

logger = logging.getLogger("somabrain.edge.ratelimit")

#: KEYS: one bucket per request of the batch (hash: ``tokens``, ``at``; a tenant may appear
#: more than once); ARGV: rate, burst, cost for each key, in order. Returns the seconds each
#: request waits as strings ("0": allowed); a Lua number would be truncated to an integer on
#: the way out, and numbers are written with ``%.17g`` because Lua's default format (14
#: digits) would drop the microseconds of ``at``.
SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local waits = {}
for i, key in ipairs(KEYS) do
  local rate = tonumber(ARGV[3 * i - 2])
  local burst = tonumber(ARGV[3 * i - 1])
  local cost = tonumber(ARGV[3 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(state[1])
  if tokens == nil then
    tokens = burst
  else
    local elapsed = now - (tonumber(state[2]) or now)
    if elapsed > 0 then
      tokens = tokens + elapsed * rate
    end
    if tokens > burst then
      tokens = burst
    end
  end
  local wait = 0
  if tokens >= cost then
    tokens = tokens - cost
  else
    wait = (cost - tokens) / rate
  end
  redis.call('HSET', key, 'tokens', string.format('%.17g', tokens),
             'at', string.format('%.17g', now))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) / rate * 1000) + 1)
  waits[i] = string.format('%.17g', wait)
end
return waits
"""

_PROBE_INTERVAL = 1.0


def shown_redis_url(url: str) -> str:
    """``url`` as logs, errors and ``/health`` show it: without user information (a password,
    or a user and password) and without its query (redis-py reads ``?password=`` too)."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query="", fragment=""))


class _LeaderCancelled(Exception):
    """The request that was sending a batch was cancelled before Redis answered (its client
    went away): its batch's other takes are decided locally, Redis is not thought down."""


class _Batch:
    """The takes gathered for one script call: a key and (rate, burst, cost) per take."""

    __slots__ = ("args", "done", "error", "keys", "waits")

    def __init__(self) -> None:
        self.keys: list[str] = []
        self.args: list[float] = []
        self.waits: list[bytes] = []
        self.done = False
        self.error: BaseException | None = None


class SharedRateLimiter:
    """The buckets in Redis, with the node-local ``RateLimiter`` as the fallback (see the
    module docstring). ``take`` is the hot path; one instance per node, one event loop."""

    def __init__(
        self,
        url: str,
        rate: float,
        burst: int,
        *,
        enabled: bool = True,
        tenants: Mapping[str, LimitOverride] | None = None,
        prefix: str = "soma:ratelimit:",
        timeout: float = 0.05,
        probe_interval: float = _PROBE_INTERVAL,
    ) -> None:
        self.local = RateLimiter(rate, burst, enabled=enabled, tenants=tenants)
        self._url = url
        self.shown_url = shown_redis_url(url)
        self._password = urllib.parse.urlsplit(url).password or ""
        self.prefix = prefix
        self.timeout = timeout
        self.probe_interval = probe_interval
        self._client: Any = None
        self._script: Any = None
        self._open_batch = _Batch()
        self._leading = False
        self._leader_done = anyio.Event()
        #: Set while Redis does not answer: why, and since when (wall clock, for /health).
        self.error: str | None = None
        self.down_since: float | None = None
        self._next_probe = 0.0
        #: Requests refused by Redis (the local buckets count their own).
        self._limited = 0
        #: Requests decided by the local buckets because Redis did not answer.
        self.local_decisions = 0
        self.outages = 0

    # ------------------------------------------------------------------ settings

    def configure(
        self,
        rate: float,
        burst: int,
        *,
        enabled: bool = True,
        tenants: Mapping[str, LimitOverride] | None = None,
    ) -> None:
        """As ``RateLimiter.configure``: the limits sent with every call from now on."""
        self.local.configure(rate, burst, enabled=enabled, tenants=tenants)

    def limit_of(self, tenant: str) -> Limit:
        return self.local.limit_of(tenant)

    @property
    def shared(self) -> bool:
        """Whether the buckets are the ones in Redis right now (False during an outage)."""
        return self.error is None

    @property
    def limited(self) -> int:
        return self._limited + self.local.limited

    # ------------------------------------------------------------------ the hot path

    async def take(self, tenant: str, cost: float = 1.0) -> float:
        """Take ``cost`` tokens: 0.0 when allowed, else the seconds until it would be."""
        rate, burst, enabled = self.local.limit_of(tenant)
        if not enabled:
            return 0.0
        if self.error is not None:
            now = time.monotonic()
            if now < self._next_probe:
                return self._take_locally(tenant, cost)
            self._next_probe = now + self.probe_interval  # this request probes; others don't
        if self._script is None:
            self._connect()
        try:
            with anyio.fail_after(self.timeout):
                wait = await self._take_shared(self.prefix + tenant, rate, burst, cost)
        except _LeaderCancelled:  # says nothing about Redis
            return self._take_locally(tenant, cost)
        except Exception as exc:  # unreachable, slow, refused: never the request's failure
            self._went_down(exc)
            return self._take_locally(tenant, cost)
        if self.error is not None:
            self._came_back()
        if wait:
            self._limited += 1
        return wait

    async def _take_shared(self, key: str, rate: float, burst: float, cost: float) -> float:
        """This take's share of a script call (module docstring: group commit). A caller that
        gives up (its timeout) while its take is gathered or in flight leaves it there: the
        token may be taken in Redis for a request the node decided locally."""
        batch = self._open_batch
        index = len(batch.keys)
        batch.keys.append(key)
        batch.args += (rate, burst, cost)
        while not batch.done:
            if self._leading:
                await self._leader_done.wait()
            else:
                await self._lead()
        if batch.error is not None:
            raise batch.error
        return float(batch.waits[index])

    async def _lead(self) -> None:
        """Send the open batch (which holds the caller's take) as the one call in flight. It
        runs within the caller's timeout; if the caller is cancelled (that timeout, or its
        request gone), the batch fails with it and its other takes are decided locally: a
        shield and a timeout of its own would cost every call more (~60 us) than this rare
        case is worth. When the caller's own timeout cancels it, the caller counts the
        outage (``take``); the batch's other takes just fall back."""
        self._leading = True
        self._leader_done = done = anyio.Event()
        batch, self._open_batch = self._open_batch, _Batch()
        try:
            batch.waits = await self._script(keys=batch.keys, args=batch.args)
        except BaseException as exc:
            batch.error = exc if isinstance(exc, Exception) else _LeaderCancelled()
            raise
        finally:
            batch.done = True
            self._leading = False
            done.set()

    def acquire(self, tenant: str, cost: float = 1.0) -> float:
        """The node-local bucket only (what ``take`` falls back on)."""
        return self.local.acquire(tenant, cost)

    def _take_locally(self, tenant: str, cost: float) -> float:
        self.local_decisions += 1
        return self.local.acquire(tenant, cost)

    # ------------------------------------------------------------------ the connection

    def _connect(self) -> Any:
        """The client and its script (made on first use, in the running event loop): a pool
        of connections kept open, each made when concurrent requests need one more."""
        from redis.asyncio import Redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: a failed call falls back at once, and the probes retry.
        self._client = Redis.from_url(
            self._url,
            socket_timeout=self.timeout,
            socket_connect_timeout=self.timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._script = self._client.register_script(SCRIPT)
        return self._script

    async def probe(self) -> bool:
        """Ask Redis whether it answers (``PING``, within the timeout); updates the state."""
        if self._client is None:
            self._connect()
        try:
            with anyio.fail_after(self.timeout):
                await self._client.ping()
        except Exception as exc:
            self._went_down(exc)
            return False
        if self.error is not None:
            self._came_back()
        return True

    async def aclose(self) -> None:
        client, self._client, self._script = self._client, None, None
        if client is not None:
            with anyio.move_on_after(1.0), anyio.CancelScope(shield=True):
                await client.aclose()

    def _went_down(self, exc: BaseException) -> None:
        reason = self._reason(exc)
        self._next_probe = time.monotonic() + self.probe_interval
        if self.error is None:
            self.outages += 1
            self.down_since = time.time()
            logger.warning(
                "rate limits are node-local: Redis at %s does not answer (%s); they are shared"
                " again once it does",
                self.shown_url,
                reason,
            )
        self.error = reason

    def _came_back(self) -> None:
        since = time.time() - (self.down_since or time.time())
        logger.warning(
            "rate limits are shared again: Redis at %s answers (node-local for %.1f s, %d"
            " requests decided here)",
            self.shown_url,
            since,
            self.local_decisions,
        )
        self.error = None
        self.down_since = None

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self.timeout * 1000:g} ms"
        text = f"{type(exc).__name__}: {exc}"
        if self._password:
            text = text.replace(self._password, "***")
        return text.replace(self._url, self.shown_url)

    # ------------------------------------------------------------------ /metrics, /health

    def metrics(self) -> list[tuple[str, str, str, list[tuple[dict[str, str], float]]]]:
        """Prometheus families for ``/metrics`` (see ``somabrain.edge.metrics``): what an
        alert on a Redis outage needs without polling ``/health``."""
        return [
            ("soma_rate_limit_shared", "gauge",
             "1 while the rate-limit buckets are the ones in Redis, 0 while node-local.",
             [({}, int(self.shared))]),
            ("soma_rate_limit_local_decisions_total", "counter",
             "Requests whose rate limit the node decided alone because Redis did not answer.",
             [({}, self.local_decisions)]),
            ("soma_rate_limit_outages_total", "counter",
             "Times Redis stopped answering the rate limiter.", [({}, self.outages)]),
        ]  # fmt: skip

    async def health(self) -> dict[str, Any]:
        """``/health``'s ``rate_limit`` component: Redis is asked (``probe``) each time, so
        the answer is current even without traffic, and a Redis back up is used again."""
        await self.probe()
        entry: dict[str, Any] = {
            "kind": "redis",
            "url": self.shown_url,
            "status": "ok" if self.shared else "degraded",
            "shared": self.shared,
            "outages": self.outages,
            "local_decisions": self.local_decisions,
        }
        if self.error is not None:
            entry["error"] = self.error
            entry["down_for"] = round(time.time() - (self.down_since or time.time()), 3)
        return entry
