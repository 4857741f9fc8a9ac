"""kill -9 of the whole dev node while many remembers are in flight, then a restart on the same
data directory: every remember that was acknowledged (HTTP 200) is there again."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest

from tests.edge.devnode import DevNode

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WRITERS = 16
KILL_AFTER = 400  # acknowledged remembers before the kill -9
MAX_PER_WRITER = 5000  # bounded even if the kill never came


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_acknowledged_remembers_survive_kill_9(tmp_path: Path, backend: str) -> None:
    data = tmp_path / "data"
    node = DevNode(data, backend=backend).start()
    acknowledged: list[tuple[str, str, str]] = []  # (tenant, key, content)
    lock = threading.Lock()
    enough = threading.Event()
    tokens = {t: node.token_for(t) for t in ("crash-a", "crash-b")}

    def writer(w: int) -> None:
        tenant = "crash-a" if w % 2 else "crash-b"
        with node.client(tokens[tenant]) as client:
            for i in range(MAX_PER_WRITER):
                content = f"writer {w} remembered item {i}"
                body = {"content": content}
                if i % 3 == 0:
                    body["key"] = f"w{w}-{i}"
                try:
                    if i % 10 == 9:  # some batches too
                        r = client.post(
                            "/memory/remember/batch",
                            json={"items": [{"content": f"{content} part {j}"} for j in range(5)]},
                        )
                    else:
                        r = client.post("/memory/remember", json=body)
                except httpx.TransportError:
                    return  # the node is gone
                if r.status_code != 200:
                    continue
                with lock:
                    if "results" in r.json():
                        for j, item in enumerate(r.json()["results"]):
                            acknowledged.append((tenant, item["key"], f"{content} part {j}"))
                    else:
                        acknowledged.append((tenant, r.json()["key"], content))
                    if len(acknowledged) >= KILL_AFTER:
                        enough.set()

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for thread in threads:
        thread.start()
    try:
        assert enough.wait(120), "the writers never got enough acknowledgements:\n" + "".join(
            node.output
        )
        node.kill()  # SIGKILL while the writers are still going
    finally:
        node.kill()
        for thread in threads:
            thread.join(60)
    assert len(acknowledged) >= KILL_AFTER

    with DevNode.running(data, backend=backend) as restarted:
        for tenant, token in tokens.items():
            with restarted.client(token) as client:
                mine = [(k, c) for t, k, c in acknowledged if t == tenant]
                for key, content in mine:
                    r = client.get(f"/memory/{key}")
                    assert r.status_code == 200, (tenant, key, r.text)
                    assert r.json()["content"] == content
                key, content = mine[len(mine) // 2]
                r = client.post("/memory/recall", json={"query": content, "top_k": 10})
                assert key in [hit["key"] for hit in r.json()["results"]]
