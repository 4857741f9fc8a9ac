"""A node process for the kill -9 test: an audit-only tree that records events as fast as 8
concurrent requests can, printing each acknowledged event id (one per line, flushed) until it
is killed. Usage: python -m tests.audit._node_proc <config.json> <data-dir>"""

from __future__ import annotations

import sys
from pathlib import Path

import anyio
import msgspec

from somabrain.config import SomaConfig
from tests.audit.harness import draft, running_node


async def main(config_path: str, data_dir: str) -> None:
    cfg = msgspec.json.decode(await anyio.Path(config_path).read_bytes(), type=SomaConfig)
    async with running_node(cfg, Path(data_dir)) as node:
        log = node.log

        async def requests(worker: int) -> None:
            i = 0
            while True:
                event_id = await log.record(draft(worker * 1_000_000 + i))
                sys.stdout.write(event_id + "\n")
                sys.stdout.flush()
                i += 1

        async with anyio.create_task_group() as tg:
            for worker in range(8):
                tg.start_soon(requests, worker)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
