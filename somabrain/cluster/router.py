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

A member joins the cluster in the background: until NATS answers it keeps trying (every
0.1 s at first, doubling up to every 2 s; for ``cluster.connect_timeout`` seconds, forever
when 0), logging why, while the node's edge already listens and answers every tenant's
request 503 ``not_ready`` (``joined`` is false). Only once connected and subscribed does it
serve or ask anything: a member that never heard the others must not guess who is up.

Once joined, the connection to NATS reconnects for as long as the node runs (nats-py's
default gives up after 60 attempts) and re-subscribes by itself. While it is down nothing is
buffered: a request for another member's tenant fails at once (503), rather than waiting in
nats-py's buffer and reaching the owner after the reconnect, long after the agent was told it
failed.
A request or a reply larger than the server's ``max_payload`` is a ``PayloadTooLargeError``
(413), on the asker or answered by the owner, instead of a message that never arrives.

``membership.py`` (hellos between members) reports members that are silent, disagree on
``cluster.members``, or share a name; a call carries the asker's membership digest and the
owner refuses it when the digest differs from its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import nats.errors

from ..actors import (
    BusConnectError,
    BusError,
    CodecError,
    MessageTooLargeError,
    Msg,
    NoRespondersError,
)
from ..actors.nats_transport import NatsBus, without_credentials
from ..context import client as planners
from ..context.actor import ADAPTATION_RESOURCE
from ..context.messages import AdaptationQuery, ContextFailure, Evaluate, Feedback
from ..memory.messages import MemoryRequest
from .errors import ClusterError, JoinTimeoutError, OwnerUnavailableError, PayloadTooLargeError
from .membership import HELLO_INTERVAL, HELLO_SUBJECT, Membership
from .ownership import owner
from .routing import MEMORY_SUPERVISOR, ask_local
from .settings import CLUSTER_RESOURCE, ClusterSettings
from .wire import (
    ContextCall,
    Hello,
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
    "cluster_member",
    "context_subject",
    "memory_subject",
]

logger = logging.getLogger("somabrain.cluster")

#: Requests served at once; beyond, NATS holds them (and counts the slow consumer).
_MAX_SERVING = 256
_OWNER_SHARE = 0.9
#: nats-py connection options: reconnect forever, every second, and buffer nothing while
#: disconnected (module doc).
_NATS_OPTIONS = {"max_reconnect_attempts": -1, "reconnect_time_wait": 1, "pending_size": 0}
#: Joining: seconds between the first two attempts to connect, doubled after each one up to
#: ``_JOIN_RETRY_MAX``; one attempt waits at most ``_JOIN_ATTEMPT_TIMEOUT`` for the server.
_JOIN_RETRY_FIRST = 0.1
_JOIN_RETRY_MAX = 2.0
_JOIN_ATTEMPT_TIMEOUT = 5.0
#: While joining, a failed attempt is logged as a warning at the first, when its reason
#: changes, and otherwise once in this many seconds (the others at debug level).
_JOIN_LOG_EVERY = 30.0

ContextRequest = Evaluate | Feedback | AdaptationQuery


def memory_subject(member: str) -> str:
    return f"soma.node.{member}.memory"


def context_subject(member: str) -> str:
    return f"soma.node.{member}.context"


@asynccontextmanager
async def cluster_member(system: Any, config: Any) -> AsyncIterator[ClusterRouter | None]:
    """This node's router for the body of the ``with`` (None without ``[cluster]``), in
    ``system.resources[CLUSTER_RESOURCE]`` for the edge and the planners. It joins the
    cluster in the background: ``await router.wait_joined()``."""
    if not config.cluster.enabled:
        yield None
        return
    router = ClusterRouter(system, config.cluster, config.node.name)
    async with anyio.create_task_group() as group:
        group.start_soon(router.run)
        system.resources[CLUSTER_RESOURCE] = router
        try:
            yield router
        finally:
            system.resources.pop(CLUSTER_RESOURCE, None)
            group.cancel_scope.cancel()


class _Joining:
    """How joining goes so far: attempts, since when, and why the last one failed."""

    def __init__(self, now: float) -> None:
        self.since = now
        self.attempts = 0
        self.reason = ""
        self.logged_reason = ""
        self.logged_at = -_JOIN_LOG_EVERY


class ClusterRouter:
    """Routes a tenant's requests to its owner (module doc). Run with ``run`` in a task
    group: it joins the cluster (``joined``, ``wait_joined``), then serves until cancelled."""

    def __init__(self, system: Any, settings: ClusterSettings, name: str) -> None:
        self.system = system
        self.settings = settings
        self.name = name
        self._bus: NatsBus | None = None
        self._serving = anyio.Semaphore(_MAX_SERVING)
        # Listening from when it joins (``Membership.listening``), not from now.
        self.membership = Membership(name, settings.members, failover=settings.failover, now=None)
        #: The server's URL without its credentials: shown in /health (no token needed),
        #: in the logs and in the errors agents get.
        self._shown_url = without_credentials(settings.nats_url)
        self._joining = _Joining(time.monotonic())
        #: Set once joined, or once joining gave up (``_join_error``).
        self._settled = anyio.Event()
        self._joined = False
        self._join_error: JoinTimeoutError | None = None

    # ------------------------------------------------------------------ ownership

    def owner_of(self, tenant: str) -> str:
        if self.settings.failover:  # among the members that are up (membership.py)
            return owner(tenant, self.membership.up(time.monotonic()))
        return owner(tenant, self.settings.members)

    def owns(self, tenant: str) -> bool:
        return self.owner_of(tenant) == self.name

    # ------------------------------------------------------------------ lifecycle

    @property
    def joined(self) -> bool:
        """Connected to NATS once and subscribed: the member serves and asks from now on
        (through any later NATS outage too)."""
        return self._joined

    @property
    def waiting(self) -> bool:
        """Not joined, and at least one attempt to connect to NATS failed."""
        return not self._joined and self._joining.attempts > 0 and bool(self._joining.reason)

    @property
    def nats_url(self) -> str:
        """The NATS server's URL without its credentials."""
        return self._shown_url

    async def wait_joined(self) -> None:
        """Return once the member joined; raise ``JoinTimeoutError`` when NATS did not answer
        within ``cluster.connect_timeout``."""
        await self._settled.wait()
        if self._join_error is not None:
            raise self._join_error

    def not_joined(self) -> str:
        """Why this member serves nothing yet (``""`` once joined): for 503s and /readyz."""
        if self._joined:
            return ""
        return f"node {self.name!r} has not joined the cluster yet: {self._waiting()}"

    def _waiting(self) -> str:
        joining = self._joining
        waited = time.monotonic() - joining.since
        text = f"waiting for NATS at {self._shown_url} ({waited:.0f} s"
        if joining.attempts:
            text += f", {joining.attempts} attempts; last: {joining.reason}"
        return text + ")"

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Join the cluster (``wait_joined``), then serve until cancelled. ``task_status``
        is told at once: joining is what ``wait_joined`` waits for."""
        task_status.started()
        async with anyio.create_task_group() as group:
            try:
                bus = await self._connect(group)
            except JoinTimeoutError as exc:
                self._join_error = exc
                self._settled.set()
                return
            try:

                async def serve(msg: Msg) -> None:
                    # One task per request: a slow tenant must not hold up the others.
                    await self._serving.acquire()
                    group.start_soon(self._serve, msg)

                await bus.subscribe(memory_subject(self.name), cb=serve)
                await bus.subscribe(context_subject(self.name), cb=serve)
                self.membership.listening(time.monotonic())
                await bus.subscribe(HELLO_SUBJECT, cb=self._heard)
                self._bus = bus
                self._joined = True
                self._settled.set()
                logger.info(
                    "member %r joined the cluster at %s (members %s)",
                    self.name,
                    self._shown_url,
                    self.membership.members,
                )
                while True:
                    await self._say_hello(bus)
                    self.membership.tick(time.monotonic())
                    if self.settings.failover:
                        self._release_moved()
                    await anyio.sleep(HELLO_INTERVAL)
            finally:
                self._bus = None
                with anyio.CancelScope(shield=True):
                    await bus.close()
                group.cancel_scope.cancel()

    async def _connect(self, group: anyio.abc.TaskGroup) -> NatsBus:
        """A bus connected to NATS: attempts with a growing pause between them, until one
        succeeds or ``cluster.connect_timeout`` has passed (``JoinTimeoutError``)."""
        joining = self._joining
        limit = self.settings.connect_timeout
        deadline = joining.since + limit if limit else None
        pause = _JOIN_RETRY_FIRST
        while True:
            timeout = _JOIN_ATTEMPT_TIMEOUT
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
                if timeout <= 0:
                    raise JoinTimeoutError(self._shown_url, limit, joining.attempts, joining.reason)
            bus = NatsBus(
                self.settings.nats_url,
                codec=wire_codec(),
                name=f"somabrain-{self.name}",
                connect_timeout=timeout,
                options=_NATS_OPTIONS,
            )
            joining.attempts += 1
            try:
                await bus.start(group)
            except BusConnectError as exc:
                joining.reason = exc.reason
            else:
                if joining.attempts > 1:
                    logger.warning(
                        "connected to NATS at %s after %d attempts (%.1f s)",
                        self._shown_url,
                        joining.attempts,
                        time.monotonic() - joining.since,
                    )
                return bus
            self._log_attempt()
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            await anyio.sleep(pause)
            pause = min(pause * 2, _JOIN_RETRY_MAX)

    def _log_attempt(self) -> None:
        joining = self._joining
        now = time.monotonic()
        message = "waiting for NATS at %s (attempt %d, %.1f s so far): %s"
        args = (self._shown_url, joining.attempts, now - joining.since, joining.reason)
        if joining.reason != joining.logged_reason or now - joining.logged_at >= _JOIN_LOG_EVERY:
            joining.logged_reason, joining.logged_at = joining.reason, now
            logger.warning(message, *args)
        else:
            logger.debug(message, *args)

    # ------------------------------------------------------------------ membership

    def _release_moved(self) -> None:
        """Stop this member's memory actors of tenants it no longer owns (a member it stood
        in for is back): their owner now writes their log, and this one would be behind it."""
        tree = self.system.resources.get("tree")
        runner = tree.find(MEMORY_SUPERVISOR) if tree is not None else None
        if runner is None or not hasattr(runner, "passivate"):
            return
        adaptation = self.system.resources.get(ADAPTATION_RESOURCE)
        for tenant in runner.names():
            if not self.owns(tenant) and runner.passivate(tenant):
                logger.info("tenant %r moved to member %r", tenant, self.owner_of(tenant))
                if adaptation is not None:  # its weights too: the owner keeps them now
                    adaptation.forget(tenant)

    async def _say_hello(self, bus: NatsBus) -> None:
        if bus.connected:
            try:
                await bus.publish(HELLO_SUBJECT, self.membership.hello())
            except (BusError, nats.errors.Error) as exc:  # reconnecting: the next one will do
                logger.debug("hello not sent: %r", exc)

    async def _heard(self, msg: Msg) -> None:
        bus = self._bus
        if not isinstance(msg.data, Hello):
            return
        if self.membership.heard(msg.data, time.monotonic()):
            if self.settings.failover:  # a member back: hand its tenants over at once
                self._release_moved()
            if bus is not None:
                await self._say_hello(bus)

    def health(self) -> dict[str, Any]:
        """The ``cluster`` component of ``/health``: the connection to NATS, the members
        heard, and what is wrong (``problems``: empty when all is well)."""
        now = time.monotonic()
        bus = self._bus
        connected = bus is not None and bus.connected
        if not self._joined:  # nothing heard yet: whom it heard from says nothing
            problems = [self.not_joined()]
        else:
            problems = self.membership.problems(now)
            if not connected:
                problems.insert(0, f"not connected to NATS at {self._shown_url}")
        return {
            "member": self.name,
            "joined": self._joined,
            "members": self.membership.members,
            "members_digest": self.membership.digest,
            "nats": {
                "url": self._shown_url,
                "connected": connected,
                "max_payload": bus.max_payload if bus is not None else 0,
            },
            "peers": self.membership.peers(now),
            "failover": self.settings.failover,
            # The members that own tenants now: all of them, or those up with failover.
            "owners": self.membership.up(now)
            if self.settings.failover
            else self.membership.members,
            "problems": problems,
        }

    # ------------------------------------------------------------------ asking

    async def ask_owner(self, tenant: str, message: MemoryRequest, timeout: float) -> Any:
        """Ask the owner over NATS: its reply, or its error raised here as the same type."""
        member = self.owner_of(tenant)
        wait = min(timeout, self.settings.request_timeout)
        call = MemoryCall(
            tenant=tenant,
            request=message,
            timeout=wait * _OWNER_SHARE,
            members=self.membership.digest,
        )
        reply = await self._request(member, memory_subject(member), call, wait)
        if isinstance(reply, Raised):
            raise decode_error(reply)
        return decode_reply(message, reply)

    async def context(self, message: ContextRequest, timeout: float) -> Any:
        """The owner's planner reply to ``message`` (or a ``ContextFailure``), like
        ``context.client.request`` on the owner; only for a tenant another member owns."""
        member = self.owner_of(message.tenant)
        wait = min(timeout, self.settings.request_timeout)
        call = ContextCall(
            request=message, timeout=wait * _OWNER_SHARE, members=self.membership.digest
        )
        try:
            reply = await self._request(member, context_subject(member), call, wait)
            if isinstance(reply, Raised):
                raise decode_error(reply)
        except PayloadTooLargeError as exc:
            return ContextFailure(status=413, code="payload_too_large", message=str(exc))
        except OwnerUnavailableError as exc:
            detail = str(exc)
            if isinstance(message, Feedback):
                detail += "; the feedback may not have been applied"
            return ContextFailure(status=503, code="unavailable", message=detail, retry_after=1.0)
        return decode_reply(message, reply)

    async def _request(
        self, member: str, subject: str, call: MemoryCall | ContextCall, wait: float
    ) -> Returned | Raised:
        bus = self._bus
        if bus is None:
            raise OwnerUnavailableError(
                member, self.not_joined() or f"node {self.name!r} left the cluster"
            )
        if not bus.connected:
            raise OwnerUnavailableError(
                member,
                f"node {self.name!r} is not connected to NATS at {self._shown_url} (reconnecting)",
            )
        try:
            msg = await bus.request(subject, call, timeout=wait)
        except MessageTooLargeError as exc:
            raise PayloadTooLargeError("request to the owner", exc.size, exc.limit) from None
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
                try:
                    await msg.respond(reply)
                except MessageTooLargeError as exc:
                    # Answered with the error, so that the asker does not wait in vain.
                    error = PayloadTooLargeError("owner's reply", exc.size, exc.limit)
                    await msg.respond(encode_error(error))
        except Exception:  # the asker's timeout reports it; the router goes on serving
            logger.exception("cluster request on %s not answered", msg.subject)
        finally:
            self._serving.release()

    def _refusal(self, tenant: str, digest: str) -> ClusterError | None:
        """Why this member will not serve a call for ``tenant`` (None: it will)."""
        if not self.membership.agrees(digest):
            return OwnerUnavailableError(
                self.name,
                f"node {self.name!r} refuses requests from members whose cluster.members"
                f" differ from its own {self.membership.members}: give every member the same"
                " list",
            )
        if not self.owns(tenant) and not self.settings.failover:
            # With failover, members may see another one fall silent a hello apart: the
            # asker's view is served (the log's one-writer check keeps the tenant whole).
            return OwnerUnavailableError(
                self.owner_of(tenant),
                f"node {self.name!r} got a request for tenant {tenant!r}, which it does not"
                " own: do the members' cluster.members lists agree?",
            )
        return None

    async def _serve_memory(self, call: MemoryCall) -> Returned | Raised:
        refusal = self._refusal(call.tenant, call.members)
        if refusal is not None:
            return encode_error(refusal)
        try:
            value = await ask_local(self.system, call.tenant, call.request, call.timeout)
        except Exception as exc:  # crosses to the asker, whose edge maps it
            return encode_error(exc)
        return encode_reply(call.request, value)

    async def _serve_context(self, call: ContextCall) -> Returned | Raised:
        request = call.request
        refusal = self._refusal(request.tenant, call.members)
        if refusal is not None:
            return encode_error(refusal)
        settings = self.system.resources["config"].context
        attempts = max(1, settings.attempts)
        try:
            reply = await planners.request(
                self.system.bus, request, timeout=call.timeout / attempts, attempts=attempts
            )
        except Exception as exc:  # a bug here: a 500 on the asker at once, not a timeout
            logger.exception("context request for tenant %r failed", request.tenant)
            return encode_error(exc)
        return encode_reply(request, reply)
