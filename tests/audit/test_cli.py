"""``somabrain audit verify`` over a node's spool: a good chain, a gap, and no trail at all."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from somabrain.audit import AuditDraft, Chain, encode_event
from somabrain.audit.spool import Spool
from somabrain.cli import main


def verify(capsys: pytest.CaptureFixture[str], data_dir: Path) -> tuple[int, str]:
    code = main(["audit", "verify", "--from", "spool", "--data-dir", str(data_dir)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def write_spool(data_dir: Path, seqs: list[int]) -> None:
    """Events 1..max(seqs) of one chain, of which those in ``seqs`` reach the spool."""
    chain = Chain("n")
    draft = AuditDraft(tenant="t", actor="a", action="x")
    events = {e.seq: encode_event(e) for e in (chain.seal(draft) for _ in range(max(seqs)))}
    spool = Spool(data_dir / "audit" / "spool")
    spool.open()
    for seq in seqs:
        anyio.run(spool.append, [events[seq]], seq)
    spool.close()


def test_an_intact_chain_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_spool(tmp_path, [1, 2, 3])
    code, out = verify(capsys, tmp_path)
    assert code == 0, out
    assert "[spool] node n: ok, 3 events, seq 1..3" in out


def test_a_missing_event_fails_and_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_spool(tmp_path, [1, 2, 4])
    code, out = verify(capsys, tmp_path)
    assert code == 1, out
    assert "BROKEN at seq 3" in out and "missing: seq 3" in out


def test_no_trail_says_which_directory_it_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = verify(capsys, tmp_path)  # a data dir whose node has audited nothing yet
    assert code == 0
    assert f"no audit events in spool ({tmp_path / 'audit' / 'spool'})" in out


@pytest.mark.parametrize("command", ["verify", "tail"])
def test_a_data_dir_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    missing = tmp_path / "wrong"
    argv = ["audit", command, "--from", "spool", "--data-dir", str(missing)]
    assert main([*argv, "--no-follow"] if command == "tail" else argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: data dir {missing} does not exist\n"
    assert not missing.exists()


@pytest.mark.parametrize("command", ["verify", "tail"])
def test_a_missing_config_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    missing = tmp_path / "node.toml"
    argv = ["audit", command, "--config", str(missing), "--data-dir", str(tmp_path)]
    assert main([*argv, "--no-follow"] if command == "tail" else argv) == 2
    assert capsys.readouterr().err == f"error: config file {missing} not found\n"


@pytest.mark.parametrize(("n", "shown"), [("0", []), ("1", [3]), ("2", [2, 3]), ("10", [1, 2, 3])])
def test_tail_shows_the_last_n_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], n: str, shown: list[int]
) -> None:
    write_spool(tmp_path, [1, 2, 3])
    argv = ["audit", "tail", "--from", "spool", "--data-dir", str(tmp_path), "--no-follow"]
    assert main([*argv, "-n", n]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["seq"] for line in lines] == shown


def test_tail_refuses_a_negative_count(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_spool(tmp_path, [1, 2, 3])
    argv = ["audit", "tail", "--data-dir", str(tmp_path), "--no-follow", "-n", "-1"]
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    assert "argument -n: must be 0 or more, got -1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("source", "key"), [("kafka", "kafka.bootstrap"), ("redis", "audit.redis_url")]
)
@pytest.mark.parametrize("command", ["verify", "tail"])
def test_a_tier_that_is_not_configured_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, source: str, key: str
) -> None:
    write_spool(tmp_path, [1])
    argv = ["audit", command, "--from", source, "--data-dir", str(tmp_path)]
    assert main([*argv, "--no-follow"] if command == "tail" else argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"error: --from {source}, but {key} is not set (give --config)\n"


def test_a_missing_key_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_spool(tmp_path, [1])
    missing = tmp_path / "chain.key"
    argv = ["audit", "verify", "--data-dir", str(tmp_path), "--key-file", str(missing)]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"error: cannot read --key-file {missing}: No such file or directory\n"
    )
