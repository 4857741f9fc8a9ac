"""The node: one actor system, one supervision tree, run until a signal.

``somabrain dev`` runs the whole tree in one process with embedded defaults: the in-process
bus, durable memory logs in the data directory, a JWT secret generated once into it, and the
HTTP edge. Start-up prints the URL and a ready-made token; SIGINT or SIGTERM stops the tree in
reverse order (the edge first: it stops accepting and finishes in-flight requests; then the
memory actors flush and close their logs) and the process exits 0.

Resources the node puts in ``system.resources`` for the actors: ``config`` (``SomaConfig``),
``config_path`` (for reloads), ``data_dir`` (``Path``), ``auth`` (``Authenticator``) and
``tree`` (``SupervisionTree``), and ``cluster`` (``ClusterRouter``) when ``[cluster]`` is set.
The edge adds ``edge.url`` once it listens.

With ``[cluster] nats_url`` set the node is a member of a tenant-partitioned cluster
(``somabrain.cluster``, docs/cluster.md); it needs the asyncio backend (nats-py). A member
whose NATS does not answer yet waits for it (``cluster.connect_timeout``; forever when 0):
its tree runs and its edge listens, answering tenants 503 until it joined; the banner comes
once it did. A signal stops it meanwhile (exit 0); the timeout stops it with an error (1).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import msgspec
import sniffio

from . import config as soma_config
from .actors import ActorSystem, SomaError
from .supervision import ConfigError, SupervisionTree
from .supervision.config import NodeSettings

__all__ = ["DEV_TENANT", "NodeInfo", "run_dev_node", "serve_node"]

logger = logging.getLogger("somabrain.node")

#: The tenant of the token the dev node prints.
DEV_TENANT = "default"


class NodeInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What a started node tells its operator."""

    url: str
    data_dir: str
    token: str | None
    tenant: str
    startup_seconds: float
    #: The config file the node runs with: ``somabrain token`` needs it too (``auth.secret``).
    config_path: str | None = None


async def serve_node(
    cfg: soma_config.SomaConfig,
    data_dir: Path,
    *,
    config_path: str | None = None,
    on_ready: Callable[[NodeInfo], Any] | None = None,
    started_at: float | None = None,
    edge_overrides: Mapping[str, Any] | None = None,
) -> None:
    """Run the node until SIGINT/SIGTERM, then stop it gracefully. ``edge_overrides``: the
    ``[edge]`` settings of ``cfg`` that the command line set (a reload keeps them)."""
    from .edge.auth import Authenticator
    from .edge.ops import CLI_OVERRIDES_RESOURCE

    started = time.perf_counter() if started_at is None else started_at
    if cfg.memory.postgres_url and sniffio.current_async_library() != "asyncio":
        raise RuntimeError("memory.postgres_url needs the asyncio backend (asyncpg)")
    if cfg.edge.rate_limit.redis_url and sniffio.current_async_library() != "asyncio":
        raise RuntimeError("edge.rate_limit.redis_url needs the asyncio backend (redis-py)")
    _quiet_cancelled_tasks()
    auth = Authenticator(cfg.auth, data_dir)
    async with ActorSystem(
        cfg.node.name, mailbox_size=cfg.node.mailbox_size, overflow=cfg.node.overflow
    ) as system:
        system.resources.update(config=cfg, config_path=config_path, data_dir=data_dir, auth=auth)
        system.resources[CLI_OVERRIDES_RESOURCE] = dict(edge_overrides or {})
        tree = SupervisionTree(system, cfg.tree, cfg.node)
        system.resources["tree"] = tree
        # Listen for signals before anything starts, so that an early SIGTERM still stops the
        # node gracefully instead of killing it half-started (or waiting for NATS).
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            # With [cluster], the member joins in the background while the tree starts (its
            # edge answers tenants 503 until then) and leaves after the tree stopped.
            member: contextlib.AbstractAsyncContextManager[Any] = contextlib.nullcontext()
            if cfg.cluster.enabled:
                from .cluster.router import cluster_member  # nats-py: cluster members only

                member = cluster_member(system, cfg)
            async with member as router:
                await tree.start()
                _tune_gc(cfg.node)
                failure: SomaError | None = None
                signum: int | None = None
                if router is not None and not router.joined:
                    if router.waiting:  # an attempt failed already: NATS is not there yet
                        print(
                            f"SomaBrain dev node listening at {system.resources['edge.url']},"
                            f" waiting for NATS at {router.nats_url} to join the cluster"
                            " (tenant requests answer 503 until then; Ctrl-C stops)",
                            flush=True,
                        )
                    signum, failure = await _joined_or_signal(router, signals)
                if signum is None and failure is None:
                    _announce(system, auth, data_dir, config_path, started, on_ready)
                    async for received in signals:
                        signum = received
                        break
                if signum is not None:
                    print(f"received {signal.Signals(signum).name}, stopping", flush=True)
                # Still listening while the tree stops: a second signal (Ctrl-C twice) exits
                # at once, instead of raising KeyboardInterrupt in whatever the stop was doing
                # (tracebacks, and a stop left half done anyway).
                async with anyio.create_task_group() as stopping:
                    stopping.start_soon(_exit_on_another_signal, signals)
                    with anyio.CancelScope(shield=True):
                        await tree.stop()
                    stopping.cancel_scope.cancel()
                if failure is not None:
                    raise failure
    print("stopped", flush=True)


def _announce(
    system: ActorSystem,
    auth: Any,
    data_dir: Path,
    config_path: str | None,
    started: float,
    on_ready: Callable[[NodeInfo], Any] | None,
) -> None:
    """Tell ``on_ready`` the node serves: its URL and a ready-made token."""
    token = None
    if auth.can_sign:
        token = auth.issuer().issue([DEV_TENANT], scopes=["admin"], subject="dev-node")
    info = NodeInfo(
        url=system.resources.get("edge.url", ""),
        data_dir=str(data_dir),
        token=token,
        tenant=DEV_TENANT,
        startup_seconds=time.perf_counter() - started,
        config_path=config_path,
    )
    if on_ready is not None:
        on_ready(info)


async def _joined_or_signal(
    router: Any, signals: AsyncIterator[int]
) -> tuple[int | None, SomaError | None]:
    """Wait until the member joined the cluster: ``(None, None)``; or a signal came first:
    ``(signum, None)``; or NATS did not answer within ``cluster.connect_timeout``:
    ``(None, the error)``."""
    from .cluster import JoinTimeoutError

    outcome: tuple[int | None, SomaError | None] = (None, None)
    async with anyio.create_task_group() as group:

        async def on_signal() -> None:
            nonlocal outcome
            async for signum in signals:
                outcome = (signum, None)
                break
            group.cancel_scope.cancel()

        group.start_soon(on_signal)
        try:
            await router.wait_joined()
        except JoinTimeoutError as exc:
            outcome = (None, exc)
        group.cancel_scope.cancel()
    return outcome


async def _exit_on_another_signal(signals: AsyncIterator[int]) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        # Safe: every acknowledged write is already on disk (fsynced before its answer), and
        # the search worker exits when its pipe closes.
        print(f"received {name} again: exiting now, without waiting for the stop", flush=True)
        os._exit(128 + signum)


def _tune_gc(node: NodeSettings) -> None:
    """Collect cyclic garbage less often in a node process (``node.gc_threshold``,
    ``node.gc_freeze``).

    Why: a serving node allocates a few hundred container objects per request, so Python's
    default young-generation threshold (700) runs a collection every few requests, and every
    tenth of those scans the long-lived objects (modules, the tree, the indexes) again. Under
    recall load that was 3-5% of the node's CPU and full collections of ~25 ms in the latency
    tail. Almost everything a request allocates is freed by reference counting, so collecting
    20x less often keeps little garbage for longer; freezing what exists once the tree has
    started takes it out of every later full collection.
    """
    if node.gc_threshold:
        _, older, oldest = gc.get_threshold()
        gc.set_threshold(node.gc_threshold, older, oldest)
    if node.gc_freeze:
        gc.collect()
        gc.freeze()


def _quiet_cancelled_tasks() -> None:
    """Drop asyncio's error reports about *cancelled* tasks.

    Killing the edge cancels Hypercorn's connection tasks, and CPython 3.11's
    ``asyncio.streams`` then logs each one as an "exception in callback" (it calls
    ``task.exception()`` on a cancelled task; fixed in 3.12). A cancelled task is not an error.
    """
    if sniffio.current_async_library() != "asyncio":
        return
    import asyncio

    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if isinstance(context.get("exception"), asyncio.CancelledError):
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


def _banner(info: NodeInfo) -> None:
    lines = [
        f"SomaBrain dev node ready in {info.startup_seconds:.2f} s",
        f"  url:      {info.url}",
        f"  data dir: {info.data_dir}",
    ]
    if info.token is not None:
        command = f"somabrain token --tenant T --data-dir {info.data_dir}"
        if info.config_path is not None:
            command += f" --config {Path(info.config_path).resolve()}"
        lines += [
            f"  token:    {info.token}",
            f"            (tenant {info.tenant!r}, scope 'admin'; a dev token: make your own with"
            f" `{command}`)",
            "  try:",
            f"    export SOMA_TOKEN={info.token}",
            f'    curl -s {info.url}/memory/remember -H "Authorization: Bearer $SOMA_TOKEN"'
            ' -H "Content-Type: application/json"'
            ' -d \'{"content": "Paris is the capital of France"}\'',
            f'    curl -s {info.url}/memory/recall -H "Authorization: Bearer $SOMA_TOKEN"'
            ' -H "Content-Type: application/json"'
            ' -d \'{"query": "capital of France", "top_k": 3}\'',
        ]
    else:
        lines.append("  token:    none (tokens come from your issuer: auth.algorithm is not HS256)")
    lines.append("  stop:     Ctrl-C (graceful)")
    print("\n".join(lines), flush=True)


def run_dev_node(
    *,
    config_path: str | None,
    port: int | None,
    data_dir: str,
    host: str | None = None,
    backend: str = "asyncio",
) -> int:
    started = time.perf_counter()
    try:
        cfg = soma_config.load(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if cfg.cluster.enabled and backend != "asyncio":
        print(
            f"error: a cluster member (cluster.nats_url is set) runs on asyncio, not {backend}:"
            " nats-py is asyncio-only",
            file=sys.stderr,
        )
        return 2
    if cfg.edge.rate_limit.redis_url and backend != "asyncio":
        print(
            f"error: shared rate limits (edge.rate_limit.redis_url is set) run on asyncio, not"
            f" {backend}: redis-py's client is asyncio-only (leave redis_url empty for"
            " node-local rate limits)",
            file=sys.stderr,
        )
        return 2
    overrides: dict[str, Any] = {"port": port, "host": host}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    cfg = msgspec.structs.replace(cfg, edge=msgspec.structs.replace(cfg.edge, **overrides))
    path = Path(data_dir).resolve()
    path.mkdir(parents=True, exist_ok=True)
    try:
        anyio.run(
            lambda: serve_node(
                cfg,
                path,
                config_path=config_path,
                on_ready=_banner,
                started_at=started,
                edge_overrides=overrides,
            ),
            backend=backend,
        )
    except (OSError, RuntimeError, SomaError, BaseExceptionGroup) as exc:
        error = _start_failure(exc)
        if error is None:
            raise
        cause: BaseException = error
        while cause.__cause__ is not None:
            cause = cause.__cause__
        detail = f" ({cause})" if cause is not error else ""
        print(f"error: {error}{detail}", file=sys.stderr)
        return 1
    return 0


def _start_failure(exc: BaseException) -> BaseException | None:
    """The one error a failed start reports (a port in use, a supervisor that could not
    start), out of the task groups that wrap it; None when it is something else (a bug)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError | RuntimeError | SomaError) else None
