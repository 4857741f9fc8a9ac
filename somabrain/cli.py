"""The ``somabrain`` command: ``dev`` (a one-process node), ``token``, ``config``, ``openapi``,
``audit``, ``constitution``, ``embedder``."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]

# The node runs one event loop; recall's matrix-vector products are too small to gain from
# BLAS threads, and on a busy machine idle BLAS threads spinning for work cost far more (we
# measured 10x slower recalls). Set before numpy is imported; the environment may override.
_SINGLE_THREADED_BLAS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _dev(args: argparse.Namespace) -> int:
    for name in _SINGLE_THREADED_BLAS:
        os.environ.setdefault(name, "1")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Hypercorn logs each request at INFO: with edge.access_log on, show them without -v.
    logging.getLogger("somabrain.edge.access").setLevel(logging.INFO)
    from .node import run_dev_node

    return run_dev_node(
        config_path=args.config,
        port=args.port,
        host=args.host,
        data_dir=args.data_dir,
        backend=args.backend,
    )


def _token(args: argparse.Namespace) -> int:
    from pathlib import Path

    from . import config
    from .edge.auth import Authenticator, TokenIssuer
    from .supervision import ConfigError

    if not args.tenant and not args.scope:
        print("error: name a --tenant, a --scope (e.g. --scope metrics), or both", file=sys.stderr)
        return 2
    try:
        cfg = config.load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.private_key:
            algorithm = "HS256" if cfg.auth.algorithm == "HS256" else cfg.auth.algorithm
            try:
                key = Path(args.private_key).read_text("utf-8")
            except OSError as exc:
                raise OSError(
                    f"cannot read --private-key {args.private_key}: {exc.strerror}"
                ) from None
            issuer = TokenIssuer(key, algorithm, cfg.auth)
        else:
            auth = Authenticator(cfg.auth, Path(args.data_dir))
            if not auth.can_sign:
                print(f"error: {cfg.auth.algorithm} tokens need --private-key", file=sys.stderr)
                return 2
            issuer = auth.issuer()
        print(
            issuer.issue(args.tenant, scopes=args.scope, ttl=args.ttl, subject=args.subject),
            flush=True,
        )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _port(text: str) -> int:
    """``dev --port``: checked here, as the config checks ``edge.port``, rather than by a bind
    that fails once the whole tree has started."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0-65535 (0 = any free port), got {port}")
    return port


def _lifetime(text: str) -> float:
    """A token's ``--ttl``: a token that is expired when printed is of no use to anyone."""
    try:
        seconds = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return seconds


def _config_check(args: argparse.Namespace) -> int:
    from . import config
    from .supervision import ConfigError

    try:
        loaded = config.load(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import msgspec

    print(msgspec.json.format(msgspec.json.encode(loaded)).decode())
    return 0


def _openapi(args: argparse.Namespace) -> int:
    from .edge.openapi import openapi_json

    sys.stdout.write(openapi_json().decode())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="somabrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run a single-process dev node")
    dev.add_argument("--config", help="TOML config file merged over the defaults")
    dev.add_argument(
        "--port", type=_port, default=None, help="HTTP port (default edge.port, 9696; 0 = any)"
    )
    dev.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    dev.add_argument("--data-dir", default=".somabrain", help="data directory (default .somabrain)")
    dev.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio", help="event loop")
    dev.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    dev.set_defaults(func=_dev)

    token = commands.add_parser(
        "token",
        help="print a bearer token the node accepts",
        description="Print a bearer token the node accepts: for tenants (--tenant), with scopes "
        "(--scope), or both. A scraper's token: somabrain token --scope metrics (no tenant: it "
        "reads /metrics and nothing else).",
    )
    token.add_argument(
        "--tenant", action="append", default=[], help="tenant the token grants (repeatable)"
    )
    token.add_argument(
        "--scope",
        action="append",
        default=[],
        help="scope (repeatable): admin (/admin/*, and /metrics), metrics (/metrics only)",
    )
    token.add_argument(
        "--data-dir", default=".somabrain", help="the node's data dir (holds the dev secret)"
    )
    token.add_argument("--config", help="TOML config file (auth settings)")
    token.add_argument("--ttl", type=_lifetime, default=None, help="lifetime in seconds (> 0)")
    token.add_argument("--subject", default="cli", help="the token's 'sub' claim")
    token.add_argument("--private-key", help="PEM private key (RS256/EdDSA configurations)")
    token.set_defaults(func=_token)

    check = commands.add_parser("config", help="validate a config file and print the result")
    check.add_argument("--config", help="TOML config file merged over the defaults")
    check.set_defaults(func=_config_check)

    openapi = commands.add_parser("openapi", help="print the OpenAPI document of the edge")
    openapi.set_defaults(func=_openapi)

    from .audit.cli import add_audit_commands

    add_audit_commands(commands)
    from .governance.cli import register as register_constitution

    register_constitution(commands)
    from .memory.cli import register as register_embedder

    register_embedder(commands)
    from .memory.pg_import import register as register_memory

    register_memory(commands)
    _tidy(parser)
    return parser


def _tidy(parser: argparse.ArgumentParser) -> None:
    """Help for people, not for Sphinx: descriptions without reStructuredText's double
    backticks (several come from module docstrings), and a subcommand without a description
    of its own shows its one-line help at the top of its ``--help``."""
    if parser.description:
        parser.description = parser.description.replace("``", "")
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            if not sub.description and helps.get(name):
                sub.description = str(helps[name]).capitalize() + "."
            _tidy(sub)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
