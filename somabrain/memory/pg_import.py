"""``somabrain memory import``: move a node's tenants from files into PostgreSQL.

    somabrain memory import --config FILE --data-dir DIR [--tenant T ...] [--dry-run]

A node on files keeps each tenant in ``<data-dir>/memory`` (the memory log ``*.memlog``, the
working-memory journal ``*.wmj``, the association journal ``*.assoc``) and
``<data-dir>/context`` (the adaptation weights, ``*.json``). With ``memory.postgres_url`` set,
a node keeps all four in that database instead and ignores the files; this command copies them
there, so that a node switched to PostgreSQL (on this data directory or an empty one) serves
the same memories, working memory, associations and weights.

Every tenant found in the data directory is copied, or only those named with ``--tenant``. A
file's name is a slug and a hash of its tenant's name; the name is read back from the slug,
the tenant's memories or its weights. The records go in as they are, through the database
stores' own write paths: the memory log's records, in order, in one transaction
(``PostgresMemoryLog.rewrite``), the journals' records as their first snapshot
(``PostgresJournal.start``), the weights as the state row (``PostgresStates.save``).

Safety. A tenant that already has anything in the database (log rows, a journal, weights) is
skipped, never merged or overwritten, with one exception: the memory log is written last, so
journals or weights without log rows are an import that failed before its log, and importing
the tenant again completes it (when its files hold a log). The files are only read (opening a
log that ends in a torn write sets the torn bytes aside beside it, as a node's start would). Run
it while no node uses the data directory or the database for these tenants: stop the node
first. A log file that a running node holds is refused (the node's lock). ``--dry-run`` says
what would be copied and writes nothing.

One line is printed per tenant, then a summary. Exit codes: 0 every tenant copied or skipped
(or nothing to import), 1 a tenant failed (the line says what; importing it again completes it),
2 usage or config error (no ``memory.postgres_url``, no such data directory).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import msgspec

__all__ = ["TenantFiles", "find_tenants", "register"]

_LOG, _WORKING, _ASSOCIATIONS, _WEIGHTS = ".memlog", ".wmj", ".assoc", ".json"


@dataclass
class TenantFiles:
    """A tenant's files in a data directory (``None``: it has none of that kind)."""

    tenant: str
    log: Path | None = None
    working: Path | None = None
    associations: Path | None = None
    weights: Path | None = None

    def any(self) -> bool:
        return any((self.log, self.working, self.associations, self.weights))


@dataclass
class _Found:
    """What the files of one tenant hold, read before anything is written."""

    records: list[Any] = field(default_factory=list)
    working: list[Any] = field(default_factory=list)
    associations: list[Any] = field(default_factory=list)
    weights: bytes | None = None
    feedback: int = 0

    def describe(self) -> str:
        from .types import ForgetRecord, RememberRecord
        from .working_journal import Added, Cleared

        live: set[str] = set()
        for record in self.records:
            if isinstance(record, RememberRecord):
                live.add(record.memory.key)
            elif isinstance(record, ForgetRecord):
                live.discard(record.key)
        sessions: set[str] = set()
        for entry in self.working:
            if isinstance(entry, Added):
                sessions.add(entry.session)
            elif isinstance(entry, Cleared):
                sessions.discard(entry.session)
        parts = [
            f"{len(self.records)} log records ({len(live)} memories)",
            f"{len(self.working)} working-memory records ({len(sessions)} sessions)",
            f"{len(self.associations)} association records",
            f"weights ({self.feedback} feedback)" if self.weights is not None else "no weights",
        ]
        return ", ".join(parts)


def _files(data_dir: Path, tenant: str) -> TenantFiles:
    from ..context.adaptation import state_path
    from .associations import association_journal_path
    from .log import tenant_log_path
    from .working_journal import working_journal_path

    memory = data_dir / "memory"
    found = TenantFiles(tenant)
    for name, path in (
        ("log", tenant_log_path(memory, tenant)),
        ("working", working_journal_path(memory, tenant)),
        ("associations", association_journal_path(memory, tenant)),
        ("weights", state_path(data_dir / "context", tenant)),
    ):
        if path.is_file():
            setattr(found, name, path)
    return found


def _tenant_in_log(path: Path) -> str | None:
    """The tenant named by the first memory of the log file at ``path`` (read only: no lock,
    no repair), or None."""
    from .errors import LogError
    from .log import read_records
    from .types import RememberRecord

    try:
        for record in read_records(path):
            if isinstance(record, RememberRecord) and record.memory.tenant:
                return record.memory.tenant
    except (OSError, LogError):  # unreadable, or a frame that does not decode: not telling
        return None
    return None


def _tenant_in_weights(path: Path) -> str | None:
    from ..context.adaptation import AdaptationState

    try:
        return msgspec.json.decode(path.read_bytes(), type=AdaptationState).tenant or None
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def find_tenants(data_dir: Path) -> tuple[list[TenantFiles], list[Path]]:
    """The tenants with files in ``data_dir`` (sorted by name), and the files whose tenant
    cannot be told (a name that does not survive its slug, and neither a memory nor weights
    that name it)."""
    from .log import tenant_log_path

    by_stem: dict[str, list[Path]] = {}
    for directory, suffixes in (
        (data_dir / "memory", (_LOG, _WORKING, _ASSOCIATIONS)),
        (data_dir / "context", (_WEIGHTS,)),
    ):
        if directory.is_dir():
            for path in sorted(directory.iterdir()):
                if path.suffix in suffixes and path.is_file():
                    by_stem.setdefault(path.stem, []).append(path)
    names: dict[str, str] = {}
    for stem, paths in by_stem.items():
        candidates = [stem.rpartition("-")[0]]
        for path in paths:
            if path.suffix == _LOG:
                candidates.append(_tenant_in_log(path) or "")
            elif path.suffix == _WEIGHTS:
                candidates.append(_tenant_in_weights(path) or "")
        for name in candidates:
            if name and tenant_log_path(data_dir, name).stem == stem:
                names[stem] = name
                break
    tenants = sorted((_files(data_dir, name) for name in set(names.values())), key=_by_name)
    unknown = [p for stem, paths in by_stem.items() if stem not in names for p in paths]
    return tenants, unknown


def _by_name(files: TenantFiles) -> str:
    return files.tenant


async def _read(files: TenantFiles) -> _Found:
    """Everything the tenant's files hold. Raises ``LogError`` (a log a node holds, a corrupt
    log), ``OSError`` or ``msgspec`` errors (damaged weights)."""
    from ..context.adaptation import AdaptationState
    from . import associations, working_journal
    from ._journal import open_journal
    from .log import MemoryLog

    found = _Found()
    if files.log is not None:
        log = await MemoryLog.open(files.log)
        try:
            found.records = await anyio.to_thread.run_sync(lambda: list(log.replay()))
        finally:
            await log.aclose()
    if files.working is not None:
        found.working = await open_journal(files.working, working_journal.KIND, list).read()
    if files.associations is not None:
        journal = open_journal(files.associations, associations.KIND, list)
        found.associations = await journal.read()
    if files.weights is not None:
        found.weights = files.weights.read_bytes()
        found.feedback = msgspec.json.decode(found.weights, type=AdaptationState).feedback
    return found


async def _in_database(logs: Any, states: Any, tenant: str) -> tuple[int, str]:
    """What the database already holds of ``tenant``: its log records, and a description of
    everything ("" if nothing)."""
    from . import associations, working_journal
    from .pg_journal import PostgresJournal

    held = []
    log = await logs.open_tenant(tenant)
    records = log.statistics().records
    await log.aclose()
    if records:
        held.append(f"{records} log records")
    for kind in (working_journal.KIND, associations.KIND):
        journal: PostgresJournal[Any] = PostgresJournal(logs, tenant, kind, list)
        rows = await journal.read()
        if rows:
            held.append(f"{len(rows)} {kind.what} records")
    if await states.load(tenant) is not None:
        held.append("weights")
    return records, ", ".join(held)


class _ImportError(Exception):
    pass


async def _write(logs: Any, states: Any, tenant: str, found: _Found) -> None:
    """Copy ``found`` into the database: journals and weights first, the memory log last and
    in one transaction."""
    from . import associations, working_journal
    from .pg_journal import PostgresJournal

    for kind, records in (
        (working_journal.KIND, found.working),
        (associations.KIND, found.associations),
    ):
        if not records:
            continue
        journal: PostgresJournal[Any] = PostgresJournal(logs, tenant, kind, partial(list, records))
        await journal.start()  # never raises: a failed write leaves it not durable
        written = journal.durable
        await journal.aclose()
        if not written:
            raise _ImportError(f"could not write the {kind.what} (see the log above)")
    if found.weights is not None:
        await states.save(tenant, found.weights)
    if found.records:
        log = await logs.open_tenant(tenant)
        try:
            await log.rewrite(found.records)
        finally:
            await log.aclose()


async def _run(
    args: argparse.Namespace, url: str, timeout: float, tenants: list[TenantFiles]
) -> int:
    from .errors import LogError, MemoryStoreError
    from .pg_log import POSTGRES_RESOURCE, PostgresLogs, PostgresStates, redacted_url

    try:
        logs = await PostgresLogs.connect(url, max_connections=2, timeout=timeout)
    except MemoryStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    states = PostgresStates({POSTGRES_RESOURCE: logs}, url, "adaptation", timeout=timeout)
    copied = skipped = failed = 0
    try:
        for files in tenants:
            name = f"tenant {files.tenant!r}"
            if not files.any():
                print(f"{name}: failed, no files in {args.data_dir}")
                failed += 1
                continue
            try:
                found = await _read(files)
            except (LogError, OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                print(f"{name}: failed, its files could not be read ({exc}); nothing written")
                failed += 1
                continue
            try:
                log_records, held = await _in_database(logs, states, files.tenant)
            except MemoryStoreError as exc:
                print(f"{name}: failed, the database could not be read ({exc}); nothing written")
                failed += 1
                continue
            # The memory log is written last (``_write``): journals or weights without it are
            # an import that stopped before it, which this one completes (a journal's first
            # snapshot replaces its rows, the weights' row is replaced).
            unfinished = held and not log_records and found.records
            if held and not unfinished:
                print(f"{name}: skipped, already in the database ({held}); nothing written")
                skipped += 1
                continue
            if args.dry_run:
                print(f"{name}: would copy {found.describe()}")
                copied += 1
                continue
            try:
                await _write(logs, states, files.tenant, found)
            except (MemoryStoreError, _ImportError) as exc:
                print(
                    f"{name}: failed ({exc}); its memory log is not in the database: importing"
                    " it again completes it"
                )
                failed += 1
                continue
            completed = f" (completing an earlier import that held {held})" if unfinished else ""
            print(f"{name}: copied {found.describe()}{completed}")
            copied += 1
    finally:
        await logs.aclose()
    verb = "would copy" if args.dry_run else "copied"
    print(
        f"{verb} {copied} tenant(s), skipped {skipped} already there, {failed} failed"
        f" ({args.data_dir} -> {redacted_url(url)})"
    )
    return 1 if failed else 0


def _import(args: argparse.Namespace) -> int:
    from .. import config
    from ..supervision import ConfigError

    try:
        memory = config.load(args.config).memory
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not memory.postgres_url:
        print(
            "error: the config sets no memory.postgres_url: there is no database to import into",
            file=sys.stderr,
        )
        return 2
    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        print(f"error: no data directory {data_dir}", file=sys.stderr)
        return 2
    unknown: list[Path] = []
    if args.tenant:
        tenants = [_files(data_dir, t) for t in dict.fromkeys(args.tenant)]
    else:
        tenants, unknown = find_tenants(data_dir)
    for path in unknown:
        print(f"{path}: failed, its tenant cannot be told from the files (name it with --tenant)")
    if not tenants:
        print(f"nothing to import: no tenant files in {data_dir}/memory or {data_dir}/context")
        return 1 if unknown else 0
    code: int = anyio.run(
        _run, args, memory.postgres_url, memory.postgres_timeout, tenants, backend="asyncio"
    )
    return 1 if unknown else code


def register(commands: Any) -> None:
    """Add ``memory import`` to the ``somabrain`` parser."""
    parser = commands.add_parser(
        "memory",
        help="move a node's tenants from files into PostgreSQL",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="memory_command", required=True)
    p = sub.add_parser(
        "import",
        help="copy the tenants' files into memory.postgres_url's database (stop the node first)",
    )
    p.add_argument("--config", required=True, help="TOML config file naming memory.postgres_url")
    p.add_argument("--data-dir", required=True, help="the node's data directory")
    p.add_argument(
        "--tenant", action="append", default=[], help="only this tenant (repeatable; default all)"
    )
    p.add_argument("--dry-run", action="store_true", help="say what would be copied; write nothing")
    p.set_defaults(func=_import)
