"""``somabrain audit verify`` and ``somabrain audit tail``.

``verify`` reads a source in stored order and checks every node's chain (hashes, links,
sequence numbers); it prints one line per node and exits 1 when a chain is broken, naming the
first broken or missing event. Sources: ``kafka`` (the topic), ``redis`` (the streams),
``spool`` (this node's spool), or ``all`` (the three, in cascade order: what is still in the
backlog continues the chain that Kafka holds). The default is the top tier configured: Kafka
when ``[kafka] bootstrap`` is set, else Redis, else the spool. A source that is not the top tier
holds only the not-yet-forwarded tail of the chain, so its check starts at its first event.

``tail`` prints events as JSON lines, the last ``-n`` first, then follows new ones.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio

__all__ = ["add_audit_commands", "run_tail", "run_verify"]

Record = tuple[str, bytes]


def add_audit_commands(commands: Any) -> None:
    """Register ``audit verify`` and ``audit tail`` on the top-level subparsers."""
    audit = commands.add_parser("audit", help="verify or follow the audit trail")
    sub = audit.add_subparsers(dest="audit_command", required=True)
    for name, helptext in (("verify", "check the hash chain"), ("tail", "follow the events")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="TOML config file merged over the defaults")
        p.add_argument("--data-dir", default=".somabrain", help="node data directory")
        p.add_argument(
            "--from",
            dest="source",
            choices=["kafka", "redis", "spool", "all"],
            help="where to read (default: the top tier configured)",
        )
        p.add_argument("--node", default="", help="only this node's chain")
        if name == "verify":
            p.add_argument("--key-file", default="", help="chain key (keyed chains)")
            p.add_argument("--strict", action="store_true", help="duplicates are failures")
            p.add_argument("--json", action="store_true", help="print the reports as JSON")
            p.set_defaults(func=_verify_command)
        else:
            p.add_argument(
                "-n", type=_count, default=10, help="events shown before following (>= 0)"
            )
            p.add_argument("--no-follow", action="store_true", help="print and exit")
            p.set_defaults(func=_tail_command)


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of events: {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {n}")
    return n


def _load(args: argparse.Namespace) -> Any | None:
    """The config, or None after saying why it cannot be loaded."""
    from .. import config
    from ..supervision import ConfigError

    try:
        return config.load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def _spool_root_missing(cfg: Any, source: str, data_dir: str) -> bool:
    """Whether the spool is to be read from a directory that does not exist, after saying so:
    a mistyped --data-dir must not pass for an empty trail."""
    if source not in ("spool", "all"):
        return False
    root = Path(cfg.audit.directory or data_dir)
    if root.is_dir():
        return False
    what = "audit.directory" if cfg.audit.directory else "data dir"
    print(f"error: {what} {root} does not exist", file=sys.stderr)
    return True


def _tier_unconfigured(cfg: Any, source: str) -> bool:
    """Whether ``--from`` names a tier the config does not set, after saying so: reading
    nothing from it must not pass for an empty (or intact) trail."""
    if source == "kafka" and not cfg.kafka.bootstrap:
        print(
            "error: --from kafka, but kafka.bootstrap is not set (give --config)", file=sys.stderr
        )
        return True
    if source == "redis" and not cfg.audit.redis_url:
        print(
            "error: --from redis, but audit.redis_url is not set (give --config)", file=sys.stderr
        )
        return True
    return False


def _default_source(cfg: Any) -> str:
    if cfg.kafka.bootstrap:
        return "kafka"
    return "redis" if cfg.audit.redis_url else "spool"


def _spool_dir(cfg: Any, data_dir: str) -> Path:
    return Path(cfg.audit.directory or Path(data_dir) / "audit") / "spool"


async def _records(
    cfg: Any,
    source: str,
    data_dir: str,
    node: str,
    *,
    follow: bool = False,
    last: int | None = None,
) -> AsyncIterator[Record]:
    from .sources import follow_spool, read_kafka, read_redis, read_spool_dir

    if source in ("kafka", "all") and cfg.kafka.bootstrap:
        async for record in read_kafka(cfg.kafka, cfg.audit.topic, follow=follow, last=last):
            yield record
    if source in ("redis", "all") and cfg.audit.redis_url:
        stream = read_redis(
            cfg.audit.redis_url, cfg.audit.redis_stream_prefix, node=node, follow=follow, last=last
        )
        async for record in stream:
            yield record
    if source in ("spool", "all"):
        if follow:
            async for record in follow_spool(_spool_dir(cfg, data_dir), last=last):
                yield record
        else:
            records = list(read_spool_dir(_spool_dir(cfg, data_dir)))
            for record in records if last is None else records[max(0, len(records) - last) :]:
                yield record


async def run_verify(
    cfg: Any,
    source: str,
    data_dir: str,
    *,
    node: str = "",
    key: bytes | None = None,
) -> dict[str, Any]:
    """Verify ``source``; returns ``{node: ChainReport}``."""
    from .chain import verify
    from .event import GENESIS

    records: list[Record] = [r async for r in _records(cfg, source, data_dir, node)]
    # A lower tier holds only the tail that is not forwarded yet: check it from its first event.
    partial = source not in ("all", _default_source(cfg))
    return verify(
        records,
        key=key,
        nodes=[node] if node else (),
        start_seq=None if partial else 1,
        anchor="" if partial else GENESIS,
    )


def _verify_command(args: argparse.Namespace) -> int:
    from .errors import SpoolCorruptError

    cfg = _load(args)
    if cfg is None:
        return 2
    source = args.source or _default_source(cfg)
    if _tier_unconfigured(cfg, source) or _spool_root_missing(cfg, source, args.data_dir):
        return 2
    key = None
    if args.key_file:
        try:
            key = Path(args.key_file).read_bytes().strip()
        except OSError as exc:
            print(f"error: cannot read --key-file {args.key_file}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        reports = anyio.run(lambda: run_verify(cfg, source, args.data_dir, node=args.node, key=key))
    except SpoolCorruptError as exc:
        print(f"BROKEN: {exc}", file=sys.stderr)
        return 1
    bad = [r for r in reports.values() if not r.ok or (args.strict and r.duplicates)]
    if args.json:
        import msgspec

        print(msgspec.json.encode({n: r for n, r in reports.items()}).decode())
    else:
        if not reports:  # say where: a wrong --data-dir must not pass for an empty trail
            where = f" ({_spool_dir(cfg, args.data_dir)})" if source == "spool" else ""
            print(f"no audit events in {source}{where}")
        for report in reports.values():
            print(f"[{source}] {report.summary()}")
    return 1 if bad else 0


async def run_tail(
    cfg: Any, source: str, data_dir: str, *, node: str, last: int, follow: bool, out: Any
) -> None:
    async for _, payload in _records(cfg, source, data_dir, node, follow=follow, last=last):
        if node and json.loads(payload).get("node") != node:
            continue
        out.write(payload.decode() + "\n")
        out.flush()


def _tail_command(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if cfg is None:
        return 2
    source = args.source or _default_source(cfg)
    if _tier_unconfigured(cfg, source) or _spool_root_missing(cfg, source, args.data_dir):
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(
            lambda: run_tail(
                cfg,
                source,
                args.data_dir,
                node=args.node,
                last=args.n,
                follow=not args.no_follow,
                out=sys.stdout,
            )
        )
    return 0
