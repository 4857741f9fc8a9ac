"""The node: one actor system, one supervision tree, run until a signal."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio

from . import config as soma_config
from .actors import ActorSystem
from .supervision import ConfigError, SupervisionTree

__all__ = ["run_dev_node"]


async def _serve(cfg: soma_config.SomaConfig, data_dir: Path) -> None:
    async with ActorSystem(
        cfg.node.name, mailbox_size=cfg.node.mailbox_size, overflow=cfg.node.overflow
    ) as system:
        system.resources["config"] = cfg
        system.resources["data_dir"] = data_dir
        tree = SupervisionTree(system, cfg.tree, cfg.node)
        await tree.start()
        print(f"somabrain node {cfg.node.name!r} up: tree {tree.root.path}", flush=True)
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                print(f"received {signal.Signals(signum).name}, stopping", flush=True)
                break
        await tree.stop()


def run_dev_node(*, config_path: str | None, port: int, data_dir: str) -> int:
    try:
        cfg = soma_config.load(config_path)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    anyio.run(_serve, cfg, path)
    return 0
