"""Crash durability: every key acknowledged before a kill -9 is there after reopening."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from somabrain.memory import TenantMemory

WRITER = Path(__file__).with_name("_crash_writer.py")
REPO = Path(__file__).resolve().parents[2]
# A guard against a hung child, not a timing assertion: no test outcome depends on speed.
STALL_GUARD_SECONDS = 120


def _run_and_kill(data_dir: Path, backend: str, kill_after: int) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), str(data_dir), backend],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    acked: list[str] = []
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        try:
            while len(acked) < kill_after:
                if not sel.select(STALL_GUARD_SECONDS):
                    pytest.fail(f"writer made no progress for {STALL_GUARD_SECONDS} s")
                chunk = os.read(proc.stdout.fileno(), 65536)
                if not chunk:
                    pytest.fail(f"writer exited early: {proc.stderr.read().decode()}")
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                acked.extend(ln.decode() for ln in lines if ln != b"ready")
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    # Lines already in the pipe were acknowledged before the kill too; a partial last line
    # (no newline) was not fully printed and is not counted.
    buffer += proc.stdout.read()
    *lines, _partial = buffer.split(b"\n")
    acked.extend(ln.decode() for ln in lines if ln and ln != b"ready")
    proc.stdout.close()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return acked


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("kill_after", [40, 400])
def test_acknowledged_writes_survive_kill_9(tmp_path: Path, backend: str, kill_after: int) -> None:
    acked = _run_and_kill(tmp_path, backend, kill_after)
    assert len(acked) >= kill_after

    async def check() -> None:
        async with await TenantMemory.open(tmp_path, "crash-tenant") as tm:
            missing = [k for k in acked if tm.get(k) is None]
            assert not missing, f"{len(missing)} acknowledged keys lost, e.g. {missing[:5]}"
            for key in acked[:50]:
                assert tm.get(key).content.startswith("writer ")
            stats = tm.log.statistics() if tm.log else None
            assert stats is not None and stats.records >= len(acked)

    anyio.run(check, backend=backend)
