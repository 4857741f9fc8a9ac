"""``NatsBus``: the :class:`~.bus.Bus` interface over a real NATS server (nats-py).

This is a process boundary, so this is where messages are encoded: every payload goes
through the bus's :class:`~.codec.Codec` on the way out and back. Subjects, patterns and
queue names are validated by :mod:`.subjects` before nats-py sees them, so both transports
refuse the same things with the same :class:`InvalidSubjectError`.

asyncio only. nats-py drives its socket with asyncio tasks and futures, which do not exist
under trio, so :meth:`NatsBus.start` refuses to run there with a ``RuntimeError`` instead of
failing obscurely later. A node that talks to NATS runs on the asyncio backend; the in-process
bus runs on both.

Differences from the in-process bus, all forced by the network and all visible:

* A subscriber that falls behind cannot slow the server down, so a message that does not fit
  in its pending queue is dropped and counted in ``statistics().dropped`` (NATS calls this a
  slow consumer). So are payloads that fail to decode, and messages nats-py still held when
  the subscription was closed.
* ``subscribe`` returns once the server has registered the subscription (one round trip), so
  a publish from any connection after that reaches it, as it would in process.
* Queue group members are picked by the server, at random, not round-robin.
* Late replies are discarded by nats-py and not counted (``late_replies`` stays 0).
* A message larger than the server's ``max_payload`` (1 MiB by default) is refused with
  ``MessageTooLargeError`` before anything is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
import anyio.abc
import nats
import nats.errors
import sniffio
from nats.aio.client import Client
from nats.aio.msg import Msg as NatsMsg
from nats.aio.subscription import Subscription as NatsSubscription

from ._exceptions import (
    BusClosedError,
    BusConnectError,
    CodecError,
    MessageTooLargeError,
    NoRespondersError,
    RequestTimeoutError,
)
from ._subscription import ActorSubscription, Msg, Subscription
from .bus import DEFAULT_REQUEST_TIMEOUT, BusBase, BusStatistics
from .codec import Codec
from .subjects import validate_subject

__all__ = ["DEFAULT_NATS_URL", "NatsBus", "without_credentials"]

logger = logging.getLogger("somabrain.actors.nats")

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


def without_credentials(url: str) -> str:
    """``url`` with its user information (user and password, or a token) replaced by ``***``:
    a NATS URL may carry a token where a user name would be, so none of it is shown."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _reason(exc: BaseException) -> str:
    """Why a connection attempt failed, in a few words."""
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        # A server that refuses the credentials answers an error and closes the connection:
        # nats-py sees either, depending on which reaches it first.
        return "connection reset by the server (did it refuse the credentials?)"
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    return str(exc) or type(exc).__name__


async def _close_unconnected(client: Client) -> None:
    """Close a client whose ``connect`` failed. nats-py's ``close`` asserts when ``connect``
    never got past parsing its options (a malformed URL): there is nothing to close then."""
    if getattr(client, "_flush_queue", None) is not None:
        await client.close()


class NatsBus(BusBase):
    """The bus across processes, through a NATS server."""

    transport = "nats"

    def __init__(
        self,
        servers: str | Sequence[str] = DEFAULT_NATS_URL,
        *,
        codec: Codec | None = None,
        name: str = "somabrain",
        connect_timeout: float = 5.0,
        flush_timeout: float = 5.0,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """``options`` go to ``nats.connect`` as they are (credentials, TLS, reconnects)."""
        super().__init__()
        self._servers = [servers] if isinstance(servers, str) else list(servers)
        self.codec = codec if codec is not None else Codec()
        self._name = name
        self._connect_timeout = connect_timeout
        self._flush_timeout = flush_timeout
        self._options = dict(options or {})
        self._nc: Client | None = None
        self._upstream: dict[Subscription, NatsSubscription] = {}
        self._by_upstream: dict[NatsSubscription, Subscription] = {}
        self._in_flight: set[anyio.CancelScope] = set()
        self._published = 0
        self._requests = 0
        self._no_responders = 0
        self._request_timeouts = 0
        #: Failed reconnect attempts since the connection was lost (0: connected).
        self._reconnect_failures = 0
        #: While ``start`` connects: the failures nats-py reported, and the attempt's scope.
        self._connecting: tuple[list[BaseException], anyio.CancelScope, Client] | None = None

    async def __aenter__(self) -> NatsBus:
        await super().__aenter__()
        return self

    # ------------------------------------------------------------------ lifecycle

    async def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Connect: one attempt at each server, within ``connect_timeout``. A server that
        cannot be reached fails the start at once with ``BusConnectError`` (nats-py itself
        would keep trying until its reconnect limit): whoever starts the bus decides whether
        and when to try again."""
        library = sniffio.current_async_library()
        if library != "asyncio":
            raise RuntimeError(
                f"NatsBus needs the asyncio backend (nats-py is asyncio-only), not {library!r}:"
                " run the node on asyncio, or use InProcessBus"
            )
        await super().start(task_group)
        client = Client()
        failures: list[BaseException] = []
        attempt = anyio.CancelScope()
        self._connecting = (failures, attempt, client)
        try:
            with anyio.fail_after(self._connect_timeout), attempt:
                await client.connect(
                    self._servers,
                    name=self._name,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    connect_timeout=max(1, round(self._connect_timeout)),
                    **self._options,
                )
            if attempt.cancelled_caught:  # every server failed once (``_on_error``)
                raise BusConnectError(self.url, self._scrubbed(_reason(failures[-1])))
        except BaseException as exc:
            self._task_group = self._backend = None
            with anyio.CancelScope(shield=True):
                await _close_unconnected(client)
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {self._connect_timeout:g} s"
                if failures:
                    reason += f" (last: {_reason(failures[-1])})"
                raise BusConnectError(self.url, self._scrubbed(reason)) from None
            if isinstance(exc, OSError | nats.errors.Error):  # nats-py refused the options
                raise BusConnectError(self.url, self._scrubbed(_reason(exc))) from None
            raise
        finally:
            self._connecting = None
        self._nc = client

    @property
    def url(self) -> str:
        """The server's address (each one, comma-separated) without credentials: what logs,
        errors and health reports show."""
        return ", ".join(without_credentials(server) for server in self._servers)

    def _scrubbed(self, text: str) -> str:
        """``text`` without the credentials of the servers' URLs, should an error echo one."""
        for server in self._servers:
            userinfo = urlsplit(server).netloc.rpartition("@")[0]
            if userinfo:
                text = text.replace(userinfo, "***")
        return text

    async def close(self) -> None:
        if self._closed:
            return
        for subscription, upstream in self._upstream.items():
            subscription._drop(upstream.pending_msgs)
        self._upstream.clear()
        self._by_upstream.clear()
        await super().close()
        for scope in self._in_flight:
            scope.cancel()
        client, self._nc = self._nc, None
        if client is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(self._flush_timeout):
                await client.close()  # writes out what is still buffered first

    @property
    def connected(self) -> bool:
        """Connected to a NATS server now (false while nats-py reconnects)."""
        return self._nc is not None and self._nc.is_connected

    @property
    def max_payload(self) -> int:
        """The largest message the server accepts (its ``max_payload``, from its INFO)."""
        return self._nc.max_payload if self._nc is not None else 0

    def _client(self) -> Client:
        self._check_open()
        assert self._nc is not None
        return self._nc

    async def _on_error(self, exc: Exception) -> None:
        if self._connecting is not None:
            # Still connecting: nats-py reports each failed attempt here and tries again,
            # forever with ``max_reconnect_attempts=-1``; one failure per server ends it.
            failures, attempt, client = self._connecting
            failures.append(exc)
            if len(failures) >= len(self._servers) and not attempt.cancel_called:
                # Closed here, before the cancellation: nats-py marks itself closed first
                # and then closes the socket, so a cancellation landing in between (its own
                # cleanup of the failed attempt comes next) would leave the socket open.
                await client.close()
                attempt.cancel()
            return
        if isinstance(exc, nats.errors.SlowConsumerError):
            subscription = self._by_upstream.get(exc.sub)
            if subscription is not None:
                subscription._drop()
            return
        if isinstance(exc, OSError) and self._nc is not None and not self._nc.is_connected:
            # A failed reconnect attempt: logged at the first and then every 60th, not every
            # second for as long as the server is down.
            self._reconnect_failures += 1
            if self._reconnect_failures % 60 != 1:
                logger.debug("NATS reconnect attempt failed: %r", exc)
                return
            logger.warning(
                "cannot reach NATS (%d attempts so far; retrying): %r",
                self._reconnect_failures,
                exc,
            )
            return
        logger.warning("NATS error: %r", exc)

    async def _on_disconnected(self) -> None:
        # Not while ``start`` connects: nats-py reports each failed attempt as a disconnect.
        if not self._closed and self._nc is not None:
            logger.warning("disconnected from NATS; nats-py reconnects")

    async def _on_reconnected(self) -> None:
        logger.info("reconnected to NATS (after %d failed attempts)", self._reconnect_failures)
        self._reconnect_failures = 0

    # ------------------------------------------------------------------ subscribing

    async def _attach(self, subscription: Subscription, pending_limit: int) -> None:
        """Subscribe upstream and wait until the server has registered the interest."""
        client = self._client()
        try:
            upstream = await client.subscribe(
                subscription.pattern,
                queue=subscription.queue or "",
                cb=self._handler(subscription),
                pending_msgs_limit=pending_limit,
            )
            self._upstream[subscription] = upstream
            self._by_upstream[upstream] = subscription
            self._subscriptions[subscription] = None
            subscription._upstream_pending = lambda: upstream.pending_msgs
            await self._round_trip(client, self._flush_timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._unsubscribe(subscription)
            subscription._cancel()
            raise

    def _handler(self, subscription: Subscription) -> Callable[[NatsMsg], Awaitable[None]]:
        decode = self.codec.decode

        async def deliver(raw: NatsMsg) -> None:
            try:
                data = decode(raw.data)
            except CodecError as exc:
                subscription._drop()
                logger.warning("dropped undecodable message on %r: %s", raw.subject, exc)
                return
            msg = Msg(raw.subject, data, raw.reply or None, raw.headers, bus=self)
            if not subscription._offer(msg):
                if isinstance(subscription, ActorSubscription):
                    await subscription._put(msg)  # mailbox backpressure; nats-py queues
                else:
                    subscription._drop()  # slow consumer: the server cannot wait for us

        return deliver

    async def _unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.pop(subscription, None)
        upstream = self._upstream.pop(subscription, None)
        if upstream is None:
            return
        self._by_upstream.pop(upstream, None)
        subscription._drop(upstream.pending_msgs)  # nats-py discards what it still holds
        subscription._upstream_pending = None
        if self._nc is not None and not self._nc.is_closed:
            try:
                await upstream.unsubscribe()
            except nats.errors.Error as exc:
                logger.warning("unsubscribe from %r failed: %r", subscription.pattern, exc)

    # ------------------------------------------------------------------ publishing

    async def publish(
        self,
        subject: str,
        data: Any,
        *,
        reply: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        client = self._client()
        validate_subject(subject)
        if reply is not None:
            validate_subject(reply)
        payload = self._fitting(subject, self.codec.encode(data), client)
        await client.publish(
            subject, payload, reply=reply or "", headers=dict(headers) if headers else None
        )
        self._published += 1

    async def request(
        self,
        subject: str,
        data: Any,
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        headers: Mapping[str, str] | None = None,
    ) -> Msg:
        client = self._client()
        validate_subject(subject)
        payload = self._fitting(subject, self.codec.encode(data), client)
        self._requests += 1
        # nats-py leaves a request waiting until its timeout when the connection closes;
        # close() cancels this scope so that it fails at once, as in process.
        scope = anyio.CancelScope()
        self._in_flight.add(scope)
        try:
            with scope:
                raw = await client.request(
                    subject, payload, timeout=timeout, headers=dict(headers) if headers else None
                )
        except nats.errors.NoRespondersError:
            self._no_responders += 1
            raise NoRespondersError(subject) from None
        except nats.errors.TimeoutError:
            self._request_timeouts += 1
            raise RequestTimeoutError(subject, timeout) from None
        finally:
            self._in_flight.discard(scope)
        if scope.cancelled_caught:
            raise BusClosedError("the bus closed before the reply arrived")
        return Msg(
            raw.subject, self.codec.decode(raw.data), raw.reply or None, raw.headers, bus=self
        )

    @staticmethod
    def _fitting(subject: str, payload: bytes, client: Client) -> bytes:
        # Checked here rather than left to nats-py, whose request would keep waiting for the
        # reply to a message it refused to send.
        if len(payload) > client.max_payload:
            raise MessageTooLargeError(subject, len(payload), client.max_payload)
        return payload

    async def flush(self, timeout: float = DEFAULT_REQUEST_TIMEOUT) -> None:
        """Round trip to the server: what was published before has been routed, and what it
        routed to this connection has reached the subscriptions' pending queues."""
        await self._round_trip(self._client(), timeout)

    @staticmethod
    async def _round_trip(client: Client, seconds: float) -> None:
        # nats-py writes its PING straight to the socket, ahead of the commands still in its
        # buffer, so one PING/PONG does not cover them. By the time the first PONG is back
        # the buffer has been written; the second PING follows it, so its PONG comes after
        # everything the server did with those commands (messages to us included).
        for _ in range(2):
            await client.flush(seconds)  # type: ignore[arg-type]

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            transport=self.transport,
            subscriptions=len(self._subscriptions),
            published=self._published,
            requests=self._requests,
            no_responders=self._no_responders,
            request_timeouts=self._request_timeouts,
            late_replies=0,
            closed=self._closed,
        )
