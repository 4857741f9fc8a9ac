"""``EdgeActor``: runs the Hypercorn server of the HTTP edge under supervision.

``on_start`` binds the listening socket (so a port conflict is a start failure the supervisor
sees, and port 0 resolves to a real port before anyone prints a URL), then starts Hypercorn in
a task of the actor system: ``hypercorn.trio.serve`` under trio, ``hypercorn.asyncio.serve``
under asyncio (picked with sniffio). ``on_stop`` is the graceful path: Hypercorn stops
accepting, lets in-flight requests finish within ``edge.graceful_timeout``, and only then does
the actor's incarnation end, while the memory actors (stopped after the edge) still answer.

A kill ends the incarnation without ``on_stop``. The server task watches the incarnation (the
cell's exit) and cancels Hypercorn then, which closes the listening socket; the supervisor's
next incarnation waits for that, and binds the same port again (SO_REUSEADDR). On trio the
cancellation also cuts open connections; asyncio's connection tasks are not under our cancel
scope and finish on their own: their responses say ``Connection: close`` (``EdgeApp.end``, which
also ends the app's lifespan, a task Hypercorn's cancelled cleanup would leave pending), and a
request that Hypercorn cancels on the way out answers a 503 to retry, not a bare 500.

The port (and the app's counters and rate-limit buckets) outlive incarnations in
``system.resources``: a restarted edge listens where the first one did, even if that was port 0.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import anyio
import anyio.abc
import sniffio

from ..actors import Actor, ActorSystem, SomaError
from ..config import SomaConfig
from .app import EdgeApp
from .auth import Authenticator
from .metrics import Metrics
from .ratelimit import RateLimiter, build_limiter
from .shared_ratelimit import SharedRateLimiter

__all__ = ["EdgeActor", "EdgeServerError", "EdgeState"]

logger = logging.getLogger("somabrain.edge")

STATE_RESOURCE = "edge.state"


class EdgeServerError(SomaError):
    """Hypercorn stopped on its own (the edge incarnation fails and is restarted)."""


class _ServerExited:
    """Told to the edge by its server task when Hypercorn returned without being asked to."""

    __slots__ = ("error", "incarnation")

    def __init__(self, incarnation: int, error: BaseException | None) -> None:
        self.incarnation = incarnation
        self.error = error


class EdgeState:
    """What outlives an edge incarnation: where it listens, counters, rate-limit buckets."""

    def __init__(self, config: SomaConfig) -> None:
        self.port: int | None = None
        self.url: str | None = None
        self.metrics = Metrics()
        self.limiter: RateLimiter | SharedRateLimiter = build_limiter(config.edge.rate_limit)
        #: Set when the last incarnation's server has released its socket.
        self.released: anyio.Event | None = None
        #: The app of the running (or last) incarnation.
        self.app: EdgeApp | None = None


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        # "Address already in use" alone does not say which address, nor that it is the edge's.
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def edge_state(system: ActorSystem) -> EdgeState:
    state: EdgeState | None = system.resources.get(STATE_RESOURCE)
    if state is None:
        state = system.resources[STATE_RESOURCE] = EdgeState(system.resources["config"])
        # Read by the telemetry publisher (``workers/telemetry.py``).
        system.resources["edge.metrics"] = state.metrics
    return state


class EdgeActor(Actor):
    """The HTTP edge (see the module docstring). Needs ``config`` and ``auth`` resources."""

    async def on_start(self) -> None:
        system = self.context.system
        config: SomaConfig = system.resources["config"]
        auth: Authenticator = system.resources["auth"]
        state = edge_state(system)
        if state.released is not None:
            # The previous incarnation was killed: wait until its server let go of the port.
            with anyio.move_on_after(max(5.0, config.edge.graceful_timeout)):
                await state.released.wait()
        edge = config.edge
        sock = _listen(edge.host, state.port if state.port is not None else edge.port, edge.backlog)
        state.port = sock.getsockname()[1]
        host = f"[{edge.host}]" if ":" in edge.host else edge.host
        state.url = f"http://{host}:{state.port}"
        system.resources["edge.url"] = state.url
        self.app = EdgeApp(
            system,
            config=config,
            auth=auth,
            metrics=state.metrics,
            limiter=state.limiter,
            edge_path=self.context.path,
        )
        state.app = self.app
        self._shutdown = anyio.Event()
        self._served = anyio.Event()
        self._ended = False
        state.released = anyio.Event()
        await system.start(self._serve, sock, state.released, name=f"{self.context.path}:http")

    async def on_stop(self) -> None:
        self.app.closing = True
        self._shutdown.set()
        await self._served.wait()  # hypercorn drained in-flight requests (graceful_timeout)
        # Nothing in flight uses the limiter now; a later incarnation connects again.
        await self.app.limiter.aclose()

    async def receive(self, message: Any) -> Any:
        if isinstance(message, _ServerExited):
            if message.incarnation != self.context.incarnation:
                return None  # about an earlier incarnation's server: already handled
            raise EdgeServerError(f"the HTTP server stopped unexpectedly: {message.error!r}")
        raise TypeError(f"the edge does not handle {type(message).__name__}")

    def _hypercorn_config(self) -> Any:
        from hypercorn.config import Config

        edge = self.app.config.edge
        config = Config()
        config.backlog = edge.backlog
        config.graceful_timeout = edge.graceful_timeout
        config.keep_alive_timeout = edge.keep_alive_timeout
        config.accesslog = logging.getLogger("somabrain.edge.access") if edge.access_log else None
        config.errorlog = logging.getLogger("somabrain.edge.server")
        return config

    async def _serve(
        self, sock: socket.socket, released: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        # hypercorn's worker_serve (what its public ``serve`` calls) takes ready sockets: ours
        # stays ours, so we can close it whatever state hypercorn was cancelled in.
        from hypercorn.config import Sockets
        from hypercorn.utils import wrap_app

        if sniffio.current_async_library() == "trio":
            from hypercorn.trio.run import worker_serve
        else:
            from hypercorn.asyncio.run import worker_serve  # type: ignore[assignment]
        cell = self.context.system.cell(self.context.path)
        assert cell is not None
        incarnation = self.context.incarnation
        config = self._hypercorn_config()
        app = wrap_app(self.app, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        try:
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    error: BaseException | None = None
                    try:
                        await worker_serve(
                            app,
                            config,
                            sockets=Sockets([], [sock], []),
                            shutdown_trigger=self._shutdown.wait,
                        )
                    except Exception as exc:  # hypercorn's own failure (or its cancel path)
                        error = exc
                    finally:
                        self._served.set()
                    if not self._shutdown.is_set() and not self._ended:
                        logger.error("the HTTP server stopped unexpectedly: %r", error)
                        await self.context.ref.tell(_ServerExited(incarnation, error))

                tg.start_soon(run)
                task_status.started()
                # Returns when the incarnation ends: after on_stop (server already drained)
                # or on a kill (then the cancellation below is what stops the server).
                await cell.wait_exited()
                self._ended = True
                tg.cancel_scope.cancel()
        finally:
            self.app.end()
            sock.close()
            released.set()
