"""SomaBrain's configuration: the supervision tree plus one section per domain.

Defaults live in ``somabrain/default.toml`` (the SomaBrain tree and every section below); a
user's file is merged over them and ``SOMA_*`` variables override single keys (see
``somabrain.supervision.config``), e.g. ``SOMA_EDGE__RATE_LIMIT__RATE=50``.

Sections:

``node``    the actor system (name, default mailbox size and overflow policy)
``tree``    the supervision tree (``somabrain.supervision.config``)
``edge``    the HTTP edge: bind address, body and batch limits, timeouts, rate limits, whether
            ``/metrics`` needs a token
``auth``    JWT verification: algorithm, HS256 secret or public key, issuer, audience
``memory``  the per-tenant memory actors: durability (fsync policy) and recall limits
``governance`` the constitution guardian: history directory, dev bootstrap, genesis pin,
            decision cache (``somabrain.governance.settings``)
``audit``   the audit writer: Redis fallback, spool, timeouts (``somabrain.audit.settings``)
``kafka``   the Kafka cluster, when there is one (``somabrain.actors.kafka_bridge``)
``bridge``  subject <-> topic routes of the Kafka bridge
``workers`` the integrity and reward workers (``somabrain.workers.settings``)
``context`` the context engine: embedder, views, working memory, bundle limits, planner
            utility, adaptation (``somabrain.context.settings``)
``cluster`` tenant-partitioned nodes over NATS: the server, the member nodes, the timeout of a
            request to another member (``somabrain.cluster.settings``); off by default
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ._urls import check_redis_url, check_server_url
from .actors.kafka_bridge import BridgeSettings, KafkaSettings
from .audit.settings import AuditSettings
from .cluster.settings import ClusterSettings, valid_member_name
from .context.settings import ContextSettings
from .governance.settings import GovernanceSettings
from .supervision.config import NodeSettings, SupervisorNode, load_config
from .tenancy import valid_tenant
from .workers.settings import WorkersSettings

__all__ = [
    "AuthSettings",
    "EdgeSettings",
    "MemorySettings",
    "RateLimitSettings",
    "SomaConfig",
    "TenantRateLimit",
    "default_config_data",
    "load",
]

PositiveInt = Annotated[int, Meta(ge=1)]
PositiveFloat = Annotated[float, Meta(gt=0)]
Seconds = Annotated[float, Meta(ge=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class TenantRateLimit(_Section):
    """One tenant's override of the rate limit; a key left out inherits the node-wide value."""

    enabled: bool | None = None
    rate: PositiveFloat | None = None
    burst: PositiveInt | None = None


class RateLimitSettings(_Section):
    """A token bucket per tenant: ``rate`` requests per second, bursts up to ``burst``.

    ``tenants`` overrides them for the tenants it names (``[edge.rate_limit.tenants.acme]``
    ``rate = 50``), see ``somabrain.edge.ratelimit``. The ``SOMA_*`` form
    (``SOMA_EDGE__RATE_LIMIT__TENANTS__ACME__RATE=50``) lowercases the tenant id, like every
    key of a variable's name: a tenant id with capitals needs the config file.
    """

    enabled: bool = True
    rate: PositiveFloat = 2000.0
    burst: PositiveInt = 4000
    tenants: dict[str, TenantRateLimit] = msgspec.field(default_factory=dict)
    #: ``redis://[:password@]host:port/db`` (or ``rediss://``): the buckets live in that Redis,
    #: shared by every node pointing at it (``somabrain.edge.shared_ratelimit``; the asyncio
    #: backend only); empty: each node has its own buckets.
    redis_url: str = ""
    #: A tenant's bucket is the key ``<redis_prefix><tenant>``.
    redis_prefix: str = "soma:ratelimit:"
    #: Seconds a bucket operation in Redis may take; past that (or when Redis does not answer)
    #: the node-local bucket decides, and keeps deciding until Redis answers again.
    redis_timeout: Annotated[float, Meta(gt=0, le=10)] = 0.05

    def __post_init__(self) -> None:
        if self.redis_url:
            check_redis_url(self.redis_url, "redis_url")
        # Checked here rather than by a key pattern, so that the error names the key.
        for tenant in self.tenants:
            if not valid_tenant(tenant):
                raise ValueError(
                    f"tenants: {tenant!r} is not a tenant id (1-64 of [A-Za-z0-9_.-], "
                    "starting with a letter or digit)"
                )


class EdgeSettings(_Section):
    host: str = "127.0.0.1"
    #: ``0`` picks a free port (the node prints the URL it got).
    port: Annotated[int, Meta(ge=0, le=65535)] = 9696
    backlog: PositiveInt = 1024
    #: Request bodies larger than this are refused with 413 (checked while reading).
    max_body_bytes: PositiveInt = 1_048_576
    #: Items in one ``/memory/remember/batch`` request.
    max_batch_items: PositiveInt = 1000
    #: Seconds an HTTP request waits for the actor that handles it (then 503).
    request_timeout: PositiveFloat = 10.0
    #: On shutdown, seconds in-flight requests get to finish after the edge stops accepting.
    graceful_timeout: Seconds = 10.0
    keep_alive_timeout: PositiveFloat = 75.0
    access_log: bool = False
    #: ``GET /metrics`` without a token. Its labels name tenants and show their traffic, so by
    #: default it needs a token with the ``metrics`` (or ``admin``) scope; set this only where
    #: nobody but the scraper can reach the port (a private network, a sidecar).
    metrics_public: bool = False
    rate_limit: RateLimitSettings = msgspec.field(default_factory=RateLimitSettings)


class AuthSettings(_Section):
    """How bearer tokens are verified.

    ``HS256`` (the default) uses ``secret``, else the secret in ``secret_file``, else the dev
    secret generated once into ``<data-dir>/dev-secret``. ``RS256`` and ``EdDSA`` verify with
    the PEM public key in ``public_key`` or ``public_key_file`` (the node cannot sign those:
    ``somabrain token`` needs ``--private-key``).
    """

    algorithm: Literal["HS256", "RS256", "EdDSA"] = "HS256"
    secret: str = ""
    secret_file: str = ""
    public_key: str = ""
    public_key_file: str = ""
    issuer: str = ""
    audience: str = ""
    leeway: Seconds = 5.0
    #: Lifetime of the token the dev node prints and of ``somabrain token`` by default.
    token_ttl: PositiveFloat = 30 * 24 * 3600.0


class MemorySettings(_Section):
    """The per-tenant memory actors (see ``somabrain.memory.actor``)."""

    #: ``group``: an acknowledged write is fsynced (survives power loss); ``never``: written
    #: to the OS (survives a kill -9 of the process only); ``always``: one fsync per write.
    fsync: Literal["always", "group", "never"] = "group"
    group_window: Seconds = 0.0
    #: Seconds a stopping memory actor waits for its in-flight writes before closing its log.
    drain_timeout: Seconds = 10.0
    #: Where the tenants' memory logs live: empty, in files under ``<data-dir>/memory``; a
    #: ``postgresql://user:password@host:port/db`` URL, in that database's ``soma_memory_log``
    #: table (``somabrain.memory.pg_log``; the asyncio backend only).
    postgres_url: str = ""
    #: At most this many connections to that database (shared by the node's tenants).
    postgres_max_connections: Annotated[int, Meta(ge=1, le=1000)] = 10
    #: Seconds a connection attempt or a statement may take before the write fails (503).
    postgres_timeout: Annotated[float, Meta(gt=0)] = 10.0
    #: Views scored besides semantic and lexical (always on); see ``somabrain.memory.views``
    #: and, for ``association`` (what feedback taught about queries like this one),
    #: ``somabrain.memory.associations``, and ``form`` (the kind of memory feedback uses),
    #: ``somabrain.memory.form``. Each costs recall time; [] is the lean setting.
    extra_views: list[Literal["graph", "recency", "salience", "association", "form"]] = (
        msgspec.field(
            default_factory=lambda: ["graph", "recency", "salience", "association", "form"]
        )
    )
    #: Default recall weights per view name; empty: the tuned ``MULTIVIEW_WEIGHTS`` restricted
    #: to the enabled views. A request (or a tenant's adapted weights) may override them.
    weights: dict[str, Annotated[float, Meta(ge=0)]] = msgspec.field(default_factory=dict)
    #: A tenant with at least this many memories is searched in the node's search worker
    #: process, a core apart from the event loop (``somabrain.memory.search_offload``);
    #: 0 keeps every search in the node's process.
    offload_min_memories: Annotated[int, Meta(ge=0)] = 2000

    def __post_init__(self) -> None:
        if self.postgres_url:
            check_server_url(
                self.postgres_url,
                "postgres_url",
                ("postgresql", "postgres"),
                "postgresql://soma@127.0.0.1:5432/soma (or empty: files)",
                host=False,  # asyncpg takes a Unix socket as ?host=/run/postgresql
            )
        enabled = {"semantic", "lexical", *self.extra_views}
        unknown = sorted(set(self.weights) - enabled)
        if unknown:
            raise ValueError(f"weights name views that are not enabled: {', '.join(unknown)}")
        if self.weights and not any(self.weights.values()):
            raise ValueError("weights must give at least one view a positive weight")


class SomaConfig(_Section):
    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    tree: SupervisorNode = msgspec.field(default_factory=SupervisorNode)
    edge: EdgeSettings = msgspec.field(default_factory=EdgeSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    memory: MemorySettings = msgspec.field(default_factory=MemorySettings)
    governance: GovernanceSettings = msgspec.field(default_factory=GovernanceSettings)
    audit: AuditSettings = msgspec.field(default_factory=AuditSettings)
    kafka: KafkaSettings = msgspec.field(default_factory=KafkaSettings)
    bridge: BridgeSettings = msgspec.field(default_factory=BridgeSettings)
    workers: WorkersSettings = msgspec.field(default_factory=WorkersSettings)
    context: ContextSettings = msgspec.field(default_factory=ContextSettings)
    cluster: ClusterSettings = msgspec.field(default_factory=ClusterSettings)

    def __post_init__(self) -> None:
        if self.cluster.enabled:
            # Checked here, not in the section: it takes both [node] and [cluster].
            name = self.node.name
            if not valid_member_name(name):
                raise ValueError(
                    f"node.name {name!r} cannot name a cluster member (1-64 of [A-Za-z0-9_-])"
                )
            if name not in self.cluster.members:
                raise ValueError(
                    f"cluster.members {self.cluster.members} must include this node's"
                    f" node.name {name!r}"
                )
            if self.cluster.failover and not self.memory.postgres_url:
                raise ValueError(
                    "cluster.failover needs memory.postgres_url: a member taking over a"
                    " tenant reads its memories from the database every member shares"
                )
        # What the config leaves to the embedder, filled in once for every reader.
        self.context = self.context.for_embedder()


def default_config_data() -> dict[str, Any]:
    text = resources.files("somabrain").joinpath("default.toml").read_text("utf-8")
    return tomllib.loads(text)


def load(path: str | Path | None = None, *, environ: dict[str, str] | None = None) -> SomaConfig:
    """Defaults, then the file at ``path`` (if any), then ``SOMA_*`` overrides."""
    return load_config(SomaConfig, path, environ=environ, base=default_config_data())
