"""kill -9 of a node whose spool is not empty, then a restart: nothing acknowledged is lost.

The node runs in a child process with Kafka and Redis configured but both down, so every
event lands in the spool. It is killed with SIGKILL in the middle of writing; then the servers
come up and the node restarts on the same data directory: it recovers the spool (cutting a
torn tail), continues the chain and drains everything, in order, into Kafka.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import msgspec
import pytest

from tests.audit.harness import check_exactly_once, running_node, spool_records
from tests.audit.test_writer_servers import cascade_config, kafka_records, wait_until_drained
from tests.servers import KafkaServer, RedisServer

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def run_until_killed(config: Path, data_dir: Path, wanted: int) -> list[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.audit._node_proc", str(config), str(data_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    acked: list[str] = []
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    try:
        while len(acked) < wanted and time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            acked.append(line.decode().strip())
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        # Ids printed after we stopped reading were acknowledged too: keep them.
        acked += [line.decode().strip() for line in process.stdout.readlines()]
        process.stdout.close()
    assert len(acked) >= wanted, f"node acknowledged only {len(acked)} events"
    return [a for a in acked if len(a) == 32]


@pytest.mark.anyio
async def test_kill_9_with_a_non_empty_spool_then_restart(
    tmp_path: Path, kafka_server: KafkaServer, redis_server: RedisServer
) -> None:
    cfg = cascade_config(kafka_server, redis_server)
    config = tmp_path / "config.json"
    config.write_bytes(msgspec.json.encode(cfg))
    data_dir = tmp_path / "node"
    kafka_server.stop()
    redis_server.stop()

    acked = await anyio.to_thread.run_sync(run_until_killed, config, data_dir, 1500)
    assert len(spool_records(data_dir)) >= len(acked)  # all in the spool, none forwarded

    kafka_server.start()
    redis_server.start()
    async with running_node(cfg, data_dir) as node:
        status = await wait_until_drained(node)
        await node.load(80, concurrency=8)  # and the chain goes on
        status = await wait_until_drained(node)
    report = check_exactly_once(await kafka_records(cfg), acked + node.acked)
    assert report.last_seq == status.head_seq
    assert spool_records(data_dir) == []
