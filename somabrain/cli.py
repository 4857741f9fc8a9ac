"""The ``somabrain`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _dev(args: argparse.Namespace) -> int:
    from .node import run_dev_node

    return run_dev_node(config_path=args.config, port=args.port, data_dir=args.data_dir)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="somabrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="run a single-process dev node")
    dev.add_argument("--config", help="TOML config file merged over the defaults")
    dev.add_argument("--port", type=int, default=9696, help="HTTP port (default 9696)")
    dev.add_argument("--data-dir", default=".somabrain", help="data directory (default .somabrain)")
    dev.set_defaults(func=_dev)

    check = commands.add_parser("config", help="validate a config file and print the result")
    check.add_argument("--config", help="TOML config file merged over the defaults")
    check.set_defaults(func=_config_check)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
