"""``somabrain memory import``: a node's tenants moved from files into PostgreSQL; a node on an
empty data directory with ``memory.postgres_url`` then serves the same memories, working memory
and weights. A second import skips the tenant; the usage errors are named."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from somabrain.cli import main
from tests.edge.devnode import DevNode
from tests.servers import PostgresServer

pytestmark = [pytest.mark.integration]

TENANT = "pg-import"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _ok(r: httpx.Response) -> Any:
    assert r.status_code == 200, r.text
    return r.json()


def _recall(client: httpx.Client, query: str, **extra: Any) -> list[str]:
    body = {"query": query, "top_k": 10, **extra}
    return [hit["key"] for hit in _ok(client.post("/memory/recall", json=body))["results"]]


def test_a_node_on_files_moves_to_postgres(
    tmp_path: Path, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    files = tmp_path / "files"
    node = DevNode(files).start()
    try:
        with node.client(node.token_for(TENANT)) as client:
            session = [
                _ok(client.post("/memory/remember", json={"content": text, "session_id": "s"}))
                ["key"]
                for text in ("Melanie painted a sunset by the lake", "Melanie ran a charity race")
            ]  # fmt: skip
            pottery = _ok(client.post("/memory/remember", json={
                "content": "Melanie signed up for a pottery class"}))["key"]  # fmt: skip
            feedback = {"session_id": "f", "query": "what hobby did Melanie take up",
                        "used_keys": [pottery], "utility": 0.9}  # fmt: skip
            _ok(client.post("/context/feedback", json=feedback))
            wm = _recall(client, "what did Melanie do", layer="wm", session_id="s")
            assert sorted(wm) == sorted(session)
            state = _ok(client.get("/context/adaptation/state"))
            assert state["feedback"] == 1
    finally:
        assert node.stop() == 0
    cfg = tmp_path / "postgres.toml"
    # A password in the URL (the test server trusts loopback, so any works) must not be shown.
    url = postgres_server.url.replace("soma@", "soma:s3cret@")
    cfg.write_text(f'[memory]\npostgres_url = "{url}"\npostgres_timeout = 3.0\n')

    code, out, err = run(capsys, "memory", "import", "--config", str(cfg), "--data-dir",
                         str(files), "--dry-run")  # fmt: skip
    assert code == 0, err
    assert out.startswith(f"tenant {TENANT!r}: would copy 4 log records (3 memories), ")
    code, out, err = run(capsys, "memory", "import", "--config", str(cfg), "--data-dir", str(files))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"tenant {TENANT!r}: copied 4 log records (3 memories), ")
    assert "(2 sessions)" in lines[0] and "weights (1 feedback)" in lines[0]
    assert lines[1].startswith("copied 1 tenant(s), skipped 0 already there, 0 failed")
    assert "s3cret" not in out + err and "soma@127.0.0.1" in lines[1]

    with (
        DevNode.running(tmp_path / "empty", "--config", str(cfg)) as moved,
        moved.client(moved.token_for(TENANT)) as client,
    ):
        assert pottery in _recall(client, "pottery class")
        for key in session:
            assert _ok(client.get(f"/memory/{key}"))["key"] == key
        assert _recall(client, "what did Melanie do", layer="wm", session_id="s") == wm
        assert _recall(client, "what did Melanie do", layer="wm", session_id="f") == [pottery]
        moved_state = _ok(client.get("/context/adaptation/state"))
        assert moved_state["feedback"] == 1
        assert moved_state["weights"] == pytest.approx(state["weights"])

    # Again: the tenant is there now, and is left alone.
    code, out, err = run(capsys, "memory", "import", "--config", str(cfg), "--data-dir", str(files))
    assert code == 0, err
    assert out.splitlines()[0].startswith(f"tenant {TENANT!r}: skipped, already in the database")
    assert "nothing written" in out.splitlines()[0]
    assert out.splitlines()[1].startswith("copied 0 tenant(s), skipped 1 already there, 0 failed")


def test_usage_errors_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files_only = tmp_path / "files.toml"
    files_only.write_text("[memory]\n")
    code, out, err = run(capsys, "memory", "import", "--config", str(files_only), "--data-dir",
                         str(tmp_path))  # fmt: skip
    assert code == 2 and not out
    assert err == (
        "error: the config sets no memory.postgres_url: there is no database to import into\n"
    )
    cfg = tmp_path / "postgres.toml"
    cfg.write_text('[memory]\npostgres_url = "postgresql://soma@127.0.0.1:9/soma"\n')
    missing = tmp_path / "missing"
    code, _, err = run(capsys, "memory", "import", "--config", str(cfg), "--data-dir", str(missing))
    assert code == 2 and err == f"error: no data directory {missing}\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = run(capsys, "memory", "import", "--config", str(cfg), "--data-dir", str(empty))
    assert code == 0
    assert out == f"nothing to import: no tenant files in {empty}/memory or {empty}/context\n"


def test_a_running_nodes_tenants_are_refused_and_tenant_picks_some(
    tmp_path: Path, postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    files = tmp_path / "files"
    tenants = ("imp-a", "imp-b")
    cfg = tmp_path / "postgres.toml"
    cfg.write_text(f'[memory]\npostgres_url = "{postgres_server.url}"\npostgres_timeout = 3.0\n')
    argv = ("memory", "import", "--config", str(cfg), "--data-dir", str(files))
    node = DevNode(files).start()
    try:
        for tenant in tenants:
            with node.client(node.token_for(tenant)) as client:
                body = {"content": f"a memory of {tenant}", "session_id": "s"}
                _ok(client.post("/memory/remember", json=body))
        # The node holds its logs: nothing of them is copied while it runs.
        code, out, _ = run(capsys, *argv)
        assert code == 1
        assert all("in use" in line or "locked" in line for line in out.splitlines()[:2]), out
        assert out.splitlines()[-1].startswith(
            "copied 0 tenant(s), skipped 0 already there, 2 failed"
        )
    finally:
        assert node.stop() == 0
    code, out, err = run(capsys, *argv, "--tenant", "imp-b")
    assert code == 0, err
    assert out.splitlines()[0].startswith("tenant 'imp-b': copied 1 log records (1 memories)")
    assert out.splitlines()[1].startswith("copied 1 tenant(s), skipped 0 already there, 0 failed")
    # An import that failed before its memory log (written last) left the rest: the next
    # import completes it instead of skipping the tenant.
    asyncio.run(_drop_log_rows(postgres_server.url, "imp-b"))
    code, out, err = run(capsys, *argv, "--tenant", "imp-b")
    assert code == 0, err
    assert out.splitlines()[0].startswith("tenant 'imp-b': copied 1 log records (1 memories)")
    assert "(completing an earlier import that held " in out.splitlines()[0]
    with (
        DevNode.running(tmp_path / "empty", "--config", str(cfg)) as moved,
        moved.client(moved.token_for("imp-a")) as to_a,
        moved.client(moved.token_for("imp-b")) as to_b,
    ):
        assert _recall(to_a, "a memory") == []  # not asked for: still only in its files
        assert len(_recall(to_b, "a memory")) == 1


async def _drop_log_rows(url: str, tenant: str) -> None:
    import asyncpg

    from somabrain.memory.pg_log import TABLE

    connection = await asyncpg.connect(url)
    try:
        await connection.execute(f"DELETE FROM {TABLE} WHERE tenant = $1", tenant)
    finally:
        await connection.close()


def test_a_log_file_that_does_not_decode_is_named_not_a_crash(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import struct
    import zlib

    from somabrain.memory.log import MAGIC

    payload = b"\xc1"  # a byte msgpack never uses: the frame is intact, its record is not
    broken = tmp_path / "memory" / "broken-0123456789abcdef.memlog"
    broken.parent.mkdir()
    broken.write_bytes(MAGIC + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload)
    cfg = tmp_path / "postgres.toml"
    cfg.write_text('[memory]\npostgres_url = "postgresql://soma@127.0.0.1:9/soma"\n')
    code, out, _ = run(
        capsys, "memory", "import", "--config", str(cfg), "--data-dir", str(tmp_path)
    )
    assert code == 1
    assert out.splitlines()[0] == (
        f"{broken}: failed, its tenant cannot be told from the files (name it with --tenant)"
    )
