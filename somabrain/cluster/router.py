"""``ClusterRouter``: this node's member of a tenant-partitioned cluster over NATS.

Each tenant belongs to one member (``ownership.owner``); its memory actor, working memory,
associations and planner adaptation state live only there. The router, on every member:

* serves ``soma.node.<name>.memory`` (a ``MemoryCall``: asks the tenant's local memory actor
  under ``/root/memory``, as the edge does) and ``soma.node.<name>.context`` (a
  ``ContextCall``: asks the local planner pool on the in-process bus, as the edge does), for
  the tenants it owns;
* offers ``ask_owner`` (memory requests; ``routing.ask_tenant`` picks it or the local actor)
  and ``context`` (evaluate, feedback, adaptation) to the edge and the planners, for tenants
  another member owns: a request to the owner over NATS whose reply or error is decoded into
  what the local call would have given.

The node's own bus stays in process: only these two subjects per node cross NATS, so a node
with a cluster configured behaves exactly as a single node for the tenants it owns.

An owner that does not answer (no connection, no responders because it is down, no reply
within ``cluster.request_timeout``) is an ``OwnerUnavailableError``: a 503 with Retry-After at
the edge. The owner gets a share of the wait for its own ask (``_OWNER_SHARE``) so that its
own timeout answer (503 ``timeout``) reaches the asker before the asker gives up.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import nats.errors

from ..actors import BusError, CodecError, Msg, NoRespondersError
from ..actors.nats_transport import NatsBus
from ..context import client as planners
from ..context.messages import AdaptationQuery, ContextFailure, Evaluate, Feedback
from ..memory.messages import MemoryRequest
from .errors import OwnerUnavailableError
from .ownership import owner
from .routing import ask_local
from .settings import CLUSTER_RESOURCE, ClusterSettings
from .wire import (
    ContextCall,
    MemoryCall,
    Raised,
    Returned,
    decode_error,
    decode_reply,
    encode_error,
    encode_reply,
    wire_codec,
)

__all__ = [
    "CLUSTER_RESOURCE",
    "ClusterRouter",
    "context_subject",
    "joined",
    "memory_subject",
]

logger = logging.getLogger("somabrain.cluster")

#: Requests served at once; beyond, NATS holds them (and counts the slow consumer).
_MAX_SERVING = 256
_OWNER_SHARE = 0.9

ContextRequest = Evaluate | Feedback | AdaptationQuery


def memory_subject(member: str) -> str:
    return f"soma.node.{member}.memory"


def context_subject(member: str) -> str:
    return f"soma.node.{member}.context"


@asynccontextmanager
async def joined(system: Any, config: Any) -> AsyncIterator[ClusterRouter | None]:
    """This node's router for the body of the ``with`` (None without ``[cluster]``), in
    ``system.resources[CLUSTER_RESOURCE]`` for the edge and the planners."""
    if not config.cluster.enabled:
        yield None
        return
    router = ClusterRouter(system, config.cluster, config.node.name)
    async with anyio.create_task_group() as group:
        await group.start(router.run)
        system.resources[CLUSTER_RESOURCE] = router
        try:
            yield router
        finally:
            system.resources.pop(CLUSTER_RESOURCE, None)
            group.cancel_scope.cancel()


class ClusterRouter:
    """Routes a tenant's requests to its owner (module doc). Run with ``run`` in a task
    group: it is ready (connected and subscribed) when ``task_group.start`` returns."""

    def __init__(self, system: Any, settings: ClusterSettings, name: str) -> None:
        self.system = system
        self.settings = settings
        self.name = name
        self._bus: NatsBus | None = None
        self._serving = anyio.Semaphore(_MAX_SERVING)

    # ------------------------------------------------------------------ ownership

    def owner_of(self, tenant: str) -> str:
        return owner(tenant, self.settings.members)

    def owns(self, tenant: str) -> bool:
        return self.owner_of(tenant) == self.name

    # ------------------------------------------------------------------ lifecycle

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        async with anyio.create_task_group() as group:
            bus = NatsBus(self.settings.nats_url, codec=wire_codec(), name=f"somabrain-{self.name}")
            await bus.start(group)
            try:

                async def serve(msg: Msg) -> None:
                    # One task per request: a slow tenant must not hold up the others.
                    await self._serving.acquire()
                    group.start_soon(self._serve, msg)

                await bus.subscribe(memory_subject(self.name), cb=serve)
                await bus.subscribe(context_subject(self.name), cb=serve)
                self._bus = bus
                logger.info("member %r joined the cluster at %s", self.name, self.settings.nats_url)
                task_status.started()
                await anyio.sleep_forever()
            finally:
                self._bus = None
                with anyio.CancelScope(shield=True):
                    await bus.close()
                group.cancel_scope.cancel()

    # ------------------------------------------------------------------ asking

    async def ask_owner(self, tenant: str, message: MemoryRequest, timeout: float) -> Any:
        """Ask the owner over NATS: its reply, or its error raised here as the same type."""
        member = self.owner_of(tenant)
        wait = min(timeout, self.settings.request_timeout)
        call = MemoryCall(tenant=tenant, request=message, timeout=wait * _OWNER_SHARE)
        reply = await self._request(member, memory_subject(member), call, wait)
        if isinstance(reply, Raised):
            raise decode_error(reply)
        return decode_reply(message, reply)

    async def context(self, message: ContextRequest, timeout: float) -> Any:
        """The owner's planner reply to ``message`` (or a ``ContextFailure``), like
        ``context.client.request`` on the owner; only for a tenant another member owns."""
        member = self.owner_of(message.tenant)
        wait = min(timeout, self.settings.request_timeout)
        call = ContextCall(request=message, timeout=wait * _OWNER_SHARE)
        try:
            reply = await self._request(member, context_subject(member), call, wait)
        except OwnerUnavailableError as exc:
            detail = str(exc)
            if isinstance(message, Feedback):
                detail += "; the feedback may not have been applied"
            return ContextFailure(status=503, code="unavailable", message=detail, retry_after=1.0)
        if isinstance(reply, Raised):
            raise decode_error(reply)
        return decode_reply(message, reply)

    async def _request(
        self, member: str, subject: str, call: MemoryCall | ContextCall, wait: float
    ) -> Returned | Raised:
        bus = self._bus
        if bus is None:
            raise OwnerUnavailableError(member, f"node {self.name!r} is not in the cluster")
        try:
            msg = await bus.request(subject, call, timeout=wait)
        except NoRespondersError:
            raise OwnerUnavailableError(member, "no responders (the node is down)") from None
        except TimeoutError:
            raise OwnerUnavailableError(member, f"no answer within {wait:g} s") from None
        except (BusError, CodecError, nats.errors.Error) as exc:
            raise OwnerUnavailableError(member, str(exc) or type(exc).__name__) from None
        if not isinstance(msg.data, Returned | Raised):
            raise OwnerUnavailableError(member, f"unexpected reply {type(msg.data).__name__}")
        return msg.data

    # ------------------------------------------------------------------ serving

    async def _serve(self, msg: Msg) -> None:
        try:
            match msg.data:
                case MemoryCall() as call:
                    reply = await self._serve_memory(call)
                case ContextCall() as call:
                    reply = await self._serve_context(call)
                case other:
                    reply = encode_error(ValueError(f"not a cluster request: {type(other)}"))
            if msg.reply:
                await msg.respond(reply)
        except Exception:  # the asker's timeout reports it; the router goes on serving
            logger.exception("cluster request on %s not answered", msg.subject)
        finally:
            self._serving.release()

    def _not_mine(self, tenant: str) -> OwnerUnavailableError:
        return OwnerUnavailableError(
            self.owner_of(tenant),
            f"node {self.name!r} got a request for tenant {tenant!r}, which it does not own:"
            " do the members' cluster.members lists agree?",
        )

    async def _serve_memory(self, call: MemoryCall) -> Returned | Raised:
        if not self.owns(call.tenant):
            return encode_error(self._not_mine(call.tenant))
        try:
            value = await ask_local(self.system, call.tenant, call.request, call.timeout)
        except Exception as exc:  # crosses to the asker, whose edge maps it
            return encode_error(exc)
        return encode_reply(call.request, value)

    async def _serve_context(self, call: ContextCall) -> Returned | Raised:
        request = call.request
        if not self.owns(request.tenant):
            return encode_error(self._not_mine(request.tenant))
        settings = self.system.resources["config"].context
        attempts = max(1, settings.attempts)
        reply = await planners.request(
            self.system.bus, request, timeout=call.timeout / attempts, attempts=attempts
        )
        return encode_reply(request, reply)
