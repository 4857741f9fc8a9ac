"""The edge's operational routes: health, readiness, metrics, OpenAPI, and the admin API
(the supervision tree, killing actors, reloading the config)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from ..cluster import CLUSTER_RESOURCE
from ..governance.http import governance_health, readiness
from ..memory.pg_log import memory_store_health
from ..memory.replica import OFFLOAD_RESOURCE
from . import schemas as s
from .errors import HTTPError
from .handlers import Handlers
from .metrics import render_sources, render_tree_metrics
from .openapi import openapi_json

if TYPE_CHECKING:
    from ..config import SomaConfig
    from .app import Request, Response

__all__ = ["CLI_OVERRIDES_RESOURCE", "LISTENER_SETTINGS", "OpsHandlers"]

_TEXT = b"text/plain; version=0.0.4; charset=utf-8"

#: Edge settings read only when the edge starts listening (the socket, Hypercorn's config): a
#: reload reports a change of one as applying after a node restart.
LISTENER_SETTINGS = (
    "host",
    "port",
    "backlog",
    "graceful_timeout",
    "keep_alive_timeout",
    "access_log",
)
#: The ``[edge]`` settings the command line set over the config file (``--host``, ``--port``).
CLI_OVERRIDES_RESOURCE = "edge.cli_overrides"


class OpsHandlers(Handlers):
    """Health, metrics, OpenAPI and admin handlers, mixed into ``EdgeApp``."""

    # ------------------------------------------------------------------ health and metrics

    async def _h_healthz(self, request: Request) -> Response:
        return self.json(s.StatusResponse(status="ok"))

    async def _h_readyz(self, request: Request) -> Response:
        tree = self.system.resources.get("tree")
        if tree is None or not tree.ready or self.closing:
            raise HTTPError.retry_later(503, "not_ready", "the supervision tree is not up", 1)
        refusal = self._not_joined()
        if refusal is not None:
            raise refusal
        ungoverned = readiness(self.system.resources)
        if ungoverned:
            raise HTTPError.retry_later(503, "not_governed", ungoverned, 5)
        return self.json(s.StatusResponse(status="ready"))

    async def _h_health(self, request: Request) -> Response:
        tree = self.tree
        info = tree.inspect()
        components: dict[str, dict[str, Any]] = {}
        for child in info.get("children", ()):
            name = child["path"].rsplit("/", 1)[-1]
            entry = {"state": child["state"], "restarts": child["restarts"]}
            if child["kind"] == "dynamic":
                entry["active"] = len(child.get("children", ()))
                entry["passivations"] = child.get("passivations", 0)
            components[name] = entry
        components["dead_letters"] = {"total": self.system.dead_letters.total}
        components["tree"] = {"ready": tree.ready, "state": info["state"]}
        components["governance"] = governance_health(self.system.resources)
        offload = self.system.resources.get(OFFLOAD_RESOURCE)
        if offload is not None:  # started with the first tenant large enough to need it
            components["search_worker"] = offload.health()
        url = self.config.memory.postgres_url
        components["memory_store"] = await memory_store_health(self.system.resources, url)
        # "degraded" while Redis does not answer: the node-local buckets decide meanwhile.
        components["rate_limit"] = await self.limiter.health()
        healthy = (
            tree.ready
            and components["governance"]["ready"]
            and components["memory_store"]["reachable"] is not False
            and components["rate_limit"]["status"] == "ok"
        )
        cluster = self.system.resources.get(CLUSTER_RESOURCE)
        if cluster is not None:  # a member of a cluster (docs/cluster.md)
            components["cluster"] = cluster.health()
            healthy = healthy and not components["cluster"]["problems"]
        return self.json(
            s.HealthResponse(status="ok" if healthy else "degraded", components=components)
        )

    async def _h_metrics(self, request: Request) -> Response:
        from .app import Response

        extra: list[str] = []
        tree = self.system.resources.get("tree")
        if tree is not None:
            extra = render_tree_metrics(
                tree.inspect(), self.system.dead_letters.statistics(), tree.ready
            )
        extra += render_sources(self.system.resources.get("metrics.sources", {}))
        return Response(200, self.metrics.render(extra).encode(), _TEXT)

    async def _h_openapi(self, request: Request) -> Response:
        from .app import Response

        return Response(200, _openapi_bytes())

    # ------------------------------------------------------------------ admin

    async def _h_admin_tree(self, request: Request) -> Response:
        return self.json(self.tree.inspect())

    async def _h_admin_kill(self, request: Request) -> Response:
        body: s.KillRequest = request.body
        tree = self.tree
        path = body.path.rstrip("/") or "/"
        if path == tree.root.path:
            raise HTTPError(409, "refused", "killing the root would stop the node; send SIGTERM")
        runner = tree.find(path)
        if runner is None or runner.path != path:
            raise HTTPError(
                404, "actor_not_found", f"no actor or supervisor at {path}", field="path"
            )
        if not tree.can_kill(runner):
            state = "is still starting" if runner.running else "is not running"
            raise HTTPError(409, "not_running", f"{path} {state}", field="path")
        if self.edge_path == path or self.edge_path.startswith(path + "/"):
            # Killing the edge (or its parent) would cut this very response: answer first.
            async def kill_after_response() -> None:
                tree.kill(path)

            request.after = kill_after_response
            await self._audit_admin(request, "admin.kill", {"path": path, "killed": True})
            return self.json(s.KillResponse(path=path, killed=True))
        killed = tree.kill(path)
        await self._audit_admin(request, "admin.kill", {"path": path, "killed": killed})
        return self.json(s.KillResponse(path=path, killed=killed))

    async def _h_admin_reload(self, request: Request) -> Response:
        from .. import config as soma_config
        from ..supervision import ConfigError

        resources = self.system.resources
        try:
            new = soma_config.load(resources.get("config_path"))
        except ConfigError as exc:
            raise HTTPError(422, "invalid_config", str(exc), field=exc.key or None) from None
        old = self.config
        changes = await self.tree.reload(new.tree, new.node)
        new = self._reload_edge(old, new, changes)
        new = self._reload_rate_limit_store(old, new, changes)
        if new.edge != old.edge:
            rate = new.edge.rate_limit
            self.limiter.configure(
                rate.rate, rate.burst, enabled=rate.enabled, tenants=rate.tenants
            )
            changes.append("edge: settings changed")
        if new.memory != old.memory:
            changes.append("memory: settings apply to memory actors started from now on")
        if new.auth != old.auth:
            changes.append("auth: settings apply after a node restart")
            new = msgspec.structs.replace(new, auth=old.auth)
        if new.context != old.context:
            new = self._reload_context(old, new, changes)
        resources["config"] = new
        self.config = new
        await self._audit_admin(
            request, "admin.reload", {"changes": len(changes), "changed": "; ".join(changes)}
        )
        return self.json(s.ReloadResponse(changes=changes))

    def _reload_edge(self, old: SomaConfig, new: SomaConfig, changes: list[str]) -> SomaConfig:
        """``new`` with the listener's settings kept as they are, each changed one reported:
        the socket and Hypercorn are set up once, when the edge starts, and the address must
        stay the same for the life of the node (a restarted edge listens where it did). What
        the CLI overrode (``--host``, ``--port``) is not a change of the file."""
        overridden = self.system.resources.get(CLI_OVERRIDES_RESOURCE, {})
        edge = msgspec.structs.replace(new.edge, **overridden)
        edge = _kept_until_restart(old.edge, edge, LISTENER_SETTINGS, "", changes)
        return msgspec.structs.replace(new, edge=edge)

    def _reload_rate_limit_store(
        self, old: SomaConfig, new: SomaConfig, changes: list[str]
    ) -> SomaConfig:
        """``new`` with the rate limit's Redis settings kept as they are: the node's limiter
        keeps its connections to that Redis for the life of the node (rates, bursts and
        overrides apply at once)."""
        fields = ("redis_url", "redis_prefix", "redis_timeout")
        was, now = old.edge.rate_limit, new.edge.rate_limit
        kept = _kept_until_restart(was, now, fields, "rate_limit.", changes)
        return msgspec.structs.replace(new, edge=msgspec.structs.replace(new.edge, rate_limit=kept))

    def _reload_context(self, old: SomaConfig, new: SomaConfig, changes: list[str]) -> SomaConfig:
        """``new`` as the node can take it, and what it changes in ``[context]``: the planners
        read their settings at every request; the memory actors read the views, associations
        and working memory when they start; the embedder stays the one the node started with
        (every tenant's vectors come from it)."""
        from .. import config as soma_config

        was, now = old.context, new.context
        if (now.embedder, now.embedding) != (was.embedder, was.embedding):
            changes.append("context: the embedder's settings apply after a node restart")
            if now.embedder != was.embedder:  # what is left to the embedder follows it too
                pinned = dict(os.environ, SOMA_CONTEXT__EMBEDDER=was.embedder)
                path = self.system.resources.get("config_path")
                now = soma_config.load(path, environ=pinned).context
            now = msgspec.structs.replace(now, embedding=was.embedding)
        memory_side = ("views", "associations", "working_memory")
        if any(getattr(now, f) != getattr(was, f) for f in memory_side):
            changes.append(
                "context: views, associations and working memory apply to memory actors "
                "started from now on"
            )
        unchanged = {f: getattr(was, f) for f in (*memory_side, "embedder", "embedding")}
        if msgspec.structs.replace(now, **unchanged) != was:
            changes.append("context: settings changed")
        return msgspec.structs.replace(new, context=now)

    async def _audit_admin(
        self, request: Request, action: str, attributes: dict[str, object]
    ) -> None:
        """Admin actions change the node, not a tenant: audited with an empty tenant, after
        they took effect (a 503 ``audit_unavailable`` then says it happened unaudited)."""
        await self._audit(request, "", action, attributes=attributes)


_OPENAPI: list[bytes] = []


def _openapi_bytes() -> bytes:
    if not _OPENAPI:
        _OPENAPI.append(openapi_json())
    return _OPENAPI[0]


def _kept_until_restart(
    old: Any, new: Any, fields: Sequence[str], prefix: str, changes: list[str]
) -> Any:
    """``new`` (an ``[edge]`` section) with ``fields`` as in ``old``: settings the node takes
    only at start. Those that changed are reported in ``changes``."""
    pending = [f for f in fields if getattr(new, f) != getattr(old, f)]
    if pending:
        verb = "applies" if len(pending) == 1 else "apply"
        changes.append(
            f"edge: {', '.join(prefix + f for f in pending)} {verb} after a node restart"
        )
    return msgspec.structs.replace(new, **{f: getattr(old, f) for f in fields})
