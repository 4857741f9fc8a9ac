"""The operator's round with ``somabrain constitution``: keygen, init, sign with k of n,
verify, rotate, and publish to a running dev node (a real process on a loopback port)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from somabrain.cli import main
from tests.edge.devnode import DevNode


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["constitution", *argv])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_keygen_init_sign_verify_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    for name in ("alice", "bob", "carol", "dave"):
        code, out = run(capsys, "keygen", "--id", name, "--out", str(keys))
        assert code == 0 and f"signer {name}" in out
    assert stat.S_IMODE((keys / "alice.key").stat().st_mode) == 0o600
    code, out = run(capsys, "keygen", "--id", "alice", "--out", str(keys))
    assert code == 2 and "refusing to overwrite" in out

    v1 = str(tmp_path / "v1.json")
    signers = [f"--signer={keys / n}.pub" for n in ("alice", "bob", "carol")]
    code, out = run(capsys, "init", *signers, "--threshold", "2", "--out", v1)
    assert code == 0 and "needs 2 of 3 signatures" in out

    code, out = run(capsys, "verify", v1)
    assert code == 1 and "insufficient_signatures" in out
    assert run(capsys, "sign", v1, "--key", str(keys / "alice.key"))[0] == 0
    code, out = run(capsys, "verify", v1)
    assert code == 1 and "1 valid signature(s) of the 2 required" in out
    assert run(capsys, "sign", v1, "--key", str(keys / "alice.key"))[1].startswith("alice already")
    assert run(capsys, "sign", v1, "--key", str(keys / "bob.key"))[0] == 0
    code, out = run(capsys, "verify", v1)
    assert code == 0 and "signed by alice, bob (2 of 3, threshold 2)" in out

    code, out = run(capsys, "show", v1)
    shown = json.loads(out)
    assert shown["version"] == 1 and shown["signatures"] == ["alice", "bob"]
    assert shown["policies"] == ["somabrain.rego"]

    # rotation: dave replaces alice; the new set alone cannot approve it
    v2 = str(tmp_path / "v2.json")
    signers = [f"--signer={keys / n}.pub" for n in ("bob", "carol", "dave")]
    code, out = run(capsys, "init", "--from", v1, *signers, "--out", v2)
    assert code == 0 and "and 2 of version 1's signers (rotation)" in out
    assert run(capsys, "sign", v2, "--key", str(keys / "dave.key"))[0] == 0
    assert run(capsys, "sign", v2, "--key", str(keys / "carol.key"))[0] == 0
    code, out = run(capsys, "verify", v2, "--previous", v1)
    assert code == 1 and "rotation_not_approved" in out and "needs 2 signature(s)" in out
    assert run(capsys, "sign", v2, "--key", str(keys / "bob.key"))[0] == 0
    code, out = run(capsys, "verify", v2, "--previous", v1)
    assert code == 0 and "a valid successor of version 1" in out


@pytest.mark.slow
def test_publish_to_a_running_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "soma.toml"
    config.write_text('[governance]\nbootstrap = "none"\n')
    keys = tmp_path / "keys"
    for name in ("alice", "bob"):
        run(capsys, "keygen", "--id", name, "--out", str(keys))
    v1 = str(tmp_path / "v1.json")
    run(capsys, "init", f"--signer={keys}/alice.pub", f"--signer={keys}/bob.pub",
        "--threshold", "2", "--out", v1)  # fmt: skip
    run(capsys, "sign", v1, "--key", str(keys / "alice.key"))

    node = DevNode(tmp_path / "data", "--config", str(config)).start()
    try:
        headers = {"Authorization": f"Bearer {node.token}"}
        with httpx.Client(base_url=node.url, headers=headers, timeout=10) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["error"]["code"] == "not_governed"
            refused = client.post("/memory/remember", json={"content": "hello"})
            assert refused.status_code == 503 and "no constitution" in refused.text

            code, out = run(capsys, "publish", v1, "--url", node.url, "--token", node.token)
            assert code == 1 and "REFUSED locally (insufficient_signatures)" in out
            run(capsys, "sign", v1, "--key", str(keys / "bob.key"))
            code, out = run(capsys, "publish", v1, "--url", node.url, "--token", node.token)
            assert code == 0 and "version 1 active" in out, out
            code, out = run(capsys, "publish", v1, "--url", node.url, "--token", node.token)
            assert code == 0 and "already active" in out

            assert client.get("/readyz").status_code == 200
            assert client.post("/memory/remember", json={"content": "hello"}).status_code == 200
            code, out = run(capsys, "show", "--url", node.url, "--token", node.token)
            assert code == 0 and json.loads(out)["signers"] == ["alice", "bob"]
    finally:
        node.stop()
    assert "NOT GOVERNED" in "".join(node.output)


def test_usage_errors_say_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    assert run(capsys, "keygen", "--id", "alice", "--out", str(keys))[0] == 0
    draft = str(tmp_path / "v1.json")
    signer = f"--signer={keys / 'alice.pub'}"
    assert run(capsys, "init", signer, "--threshold", "1", "--out", draft)[0] == 0

    # showing nothing: neither a document nor a node
    assert run(capsys, "show") == (
        2,
        "error: name a document to show, or a running node with --url\n",
    )
    # signing with the public key: it says so (not "chmod 600" of a file meant to be shared)
    code, out = run(capsys, "sign", draft, "--key", str(keys / "alice.pub"))
    assert code == 2
    assert out == (
        f"error: {keys / 'alice.pub'} is a public key file:"
        " sign with the private key (<id>.key) of keygen\n"
    )
    # a threshold of 0 is refused as such, with or without --from (it was taken for "unset")
    for extra in ((), ("--from", draft)):
        with pytest.raises(SystemExit) as exited:
            main(["constitution", "init", *extra, signer, "--threshold", "0", "--out", draft])
        assert exited.value.code == 2
        assert "argument --threshold: must be 1 or more, got 0" in capsys.readouterr().err
    # a --policies directory that is not there names the option, not a config key
    missing = tmp_path / "nope"
    code, out = run(
        capsys, "init", signer, "--threshold", "1", "--policies", str(missing), "--out", draft
    )
    assert (code, out) == (2, f"error: --policies {missing}: no such directory\n")
