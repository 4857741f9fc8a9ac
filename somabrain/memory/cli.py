"""``somabrain embedder``: what a node would run, and the MiniLM embedder's ONNX export, ahead
of time.

    somabrain embedder export [--config FILE] [--cache-dir DIR] [--force]
    somabrain embedder info   [--config FILE] [--cache-dir DIR]
    somabrain embedder prune  [--config FILE] [--cache-dir DIR] [--dry-run]

``export`` makes the ONNX export that a node with ``embedder = "minilm"`` otherwise makes on its
first start (needs torch, about 10 s; see ``minilm_export``); a valid export is kept unless
``--force``. The directory is ``--cache-dir``, else the config's ``context.embedding.onnx_dir``,
else ``$XDG_CACHE_HOME/somabrain``. ``info`` prints the embedder the config names
(``context.embedder``): the built-in one, or MiniLM with the runtime a node would pick and
whether the export is there. ``prune`` removes the exports made for another package version,
weights or recipe (~90 MB each; left in place otherwise, since environments may share the
directory); without the extra there is nothing to prune (no export is this environment's).
Exit codes: 0 ok, 1 the export failed, 2 usage, config or install error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["register"]

_NO_EXTRA = (
    "the minilm extra is not installed"
    " (pip install torch==2.13.0 && pip install 'somabrain[minilm]')"
)


def _context(args: argparse.Namespace) -> Any:
    from .. import config

    return config.load(args.config).context


def _settings(args: argparse.Namespace) -> Any:
    return _context(args).embedding


def _cache_dir(args: argparse.Namespace, settings: Any) -> Path | None:
    chosen = args.cache_dir or settings.onnx_dir
    return Path(chosen) if chosen else None


def _export(args: argparse.Namespace) -> int:
    from ..supervision import ConfigError
    from .minilm_export import MiniLMExportError, export, export_paths

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = export_paths(_cache_dir(args, _settings(args)))
    except (ConfigError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        made = export(paths, force=args.force)
    except (MiniLMExportError, ImportError, OSError) as exc:
        print(f"error: the export failed: {exc}", file=sys.stderr)
        return 1
    if not args.quiet:
        size = paths.onnx.stat().st_size / 1e6
        if made:
            seconds = time.perf_counter() - started
            print(f"exported all-MiniLM-L6-v2 to {paths.onnx} ({size:.0f} MB, {seconds:.1f} s)")
        else:
            print(f"already exported: {paths.onnx} ({size:.0f} MB)")
    return 0


def _info(args: argparse.Namespace) -> int:
    from ..supervision import ConfigError
    from .embedder import DEFAULT_DIM
    from .minilm import MINILM_DIM, minilm_available, onnx_runtime_available, select_runtime
    from .minilm_export import MODEL_NAME, export_paths, read_export

    try:
        context = _context(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    extra = minilm_available()
    if context.embedder == "builtin":
        print(f"embedder:     builtin (feature hashing, {DEFAULT_DIM} dimensions, no download)")
        print(f"minilm extra: {'installed' if extra else 'not installed'} (not used)")
        return 0
    if not extra:
        print(f"error: {_NO_EXTRA}", file=sys.stderr)
        return 2
    settings = context.embedding
    print(f"embedder:     minilm ({MODEL_NAME}, {MINILM_DIM} dimensions)")
    onnx = onnx_runtime_available()
    try:
        chosen = select_runtime(settings.runtime, onnx_installed=onnx)
    except ImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths = export_paths(_cache_dir(args, settings))
    valid = read_export(paths) is not None
    print(f"runtime:      {settings.runtime} -> {chosen}")
    print(f"onnxruntime:  {'installed' if onnx else 'not installed'}")
    print(f"onnx export:  {paths.onnx} ({'valid' if valid else 'not made yet, or stale'})")
    return 0


def _prune(args: argparse.Namespace) -> int:
    from ..supervision import ConfigError
    from .minilm import minilm_available
    from .minilm_export import default_cache_dir, export_paths, prune

    try:
        cache_dir = _cache_dir(args, _settings(args))
        if not minilm_available():
            # prune keeps this environment's export and removes the others; without the extra
            # this environment has none, and every export there may be in use elsewhere.
            directory = (cache_dir or default_cache_dir()) / "minilm"
            print(
                f"nothing to prune: {_NO_EXTRA}, so this environment has no export;"
                f" any in {directory} are other environments'"
            )
            return 0
        paths = export_paths(cache_dir)
        removed = prune(paths, dry_run=args.dry_run)
    except (ConfigError, ImportError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "would remove" if args.dry_run else "removed"
    for path in removed:
        print(f"{verb} {path}")
    print(f"kept {paths.onnx.name} (this environment's export); {verb} {len(removed)} file(s)")
    return 0


def register(commands: Any) -> None:
    """Add ``embedder`` and its subcommands to the ``somabrain`` parser."""
    parser = commands.add_parser(
        "embedder",
        help="make the MiniLM embedder's ONNX export ahead of time; show what a node runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="embedder_command", required=True)
    for name, func, helptext in (
        ("export", _export, "make the ONNX export of all-MiniLM-L6-v2 (needs torch)"),
        ("info", _info, "print the embedder a node would run (MiniLM: runtime, export)"),
        ("prune", _prune, "remove the exports made for another version, weights or recipe"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--config", help="TOML config file (context.embedding)")
        p.add_argument("--cache-dir", help="where exports are kept (default: see --help)")
        if name == "export":
            p.add_argument("--force", action="store_true", help="export even if one is valid")
            p.add_argument("--quiet", action="store_true", help="print nothing on success")
        if name == "prune":
            p.add_argument("--dry-run", action="store_true", help="only list what would go")
        p.set_defaults(func=func)
