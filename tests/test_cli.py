"""The ``somabrain`` command's own subcommands: ``config`` and ``token`` (their errors)."""

from __future__ import annotations

from pathlib import Path

import pytest

from somabrain.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_a_missing_config_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "node.toml"
    code, _, err = run(capsys, "config", "--config", str(missing))
    assert code == 2
    assert err == f"error: config file {missing} not found\n"


def test_a_toml_syntax_error_says_where(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "node.toml"
    broken.write_text('[edge]\nport = 9000\nhost = "127.0.0.1\n')
    code, _, err = run(capsys, "config", "--config", str(broken))
    assert code == 2
    assert err.startswith(f"error: config file {broken}: not valid TOML: ")
    assert "line 3" in err and "invalid config key" not in err


def test_a_bad_value_still_names_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.toml"
    path.write_text("[edge]\nport = -1\n")
    code, _, err = run(capsys, "config", "--config", str(path))
    assert code == 2
    assert f"invalid config key 'edge.port' ({path})" in err


@pytest.mark.parametrize("ttl", ["0", "-5", "nan", "inf", "soon"])
def test_a_token_lifetime_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], ttl: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["token", "--tenant", "t", "--data-dir", str(tmp_path), "--ttl", ttl])
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no token printed
    assert "argument --ttl:" in captured.err


def test_a_token_lives_for_its_ttl(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from somabrain.config import AuthSettings
    from somabrain.edge.auth import Authenticator

    code, out, _ = run(
        capsys, "token", "--tenant", "t", "--data-dir", str(tmp_path), "--ttl", "0.5"
    )
    assert code == 0
    principal = Authenticator(AuthSettings(), tmp_path).authenticate(f"Bearer {out.strip()}")
    assert principal.tenants == {"t"}


def test_a_token_needs_an_existing_data_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "typo"
    code, out, err = run(capsys, "token", "--tenant", "t", "--data-dir", str(missing))
    assert code == 2 and out == ""  # no token that no node would accept
    assert f"error: data dir {missing} does not exist" in err
    assert not missing.exists()


@pytest.mark.parametrize("port", ["-1", "65536", "99999", "http"])
def test_a_dev_port_out_of_range_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], port: str
) -> None:
    # Refused before anything starts (it used to start the tree and fail in bind, exit 1).
    with pytest.raises(SystemExit) as exit_:
        main(["dev", "--port", port, "--data-dir", str(tmp_path / "data")])
    assert exit_.value.code == 2
    assert "argument --port: " in capsys.readouterr().err
    assert not (tmp_path / "data").exists()


def test_a_missing_private_key_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "issuer.pem"
    code, out, err = run(capsys, "token", "--tenant", "t", "--private-key", str(missing))
    assert code == 2 and out == ""
    assert err == f"error: cannot read --private-key {missing}: No such file or directory\n"


def test_every_help_reads_as_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    """No reStructuredText double backticks, and every subcommand says what it does at the
    top of its --help."""
    commands = [[], ["dev"], ["config"], ["openapi"], ["audit"], ["audit", "verify"],
                ["constitution"], ["constitution", "show"], ["embedder"], ["token"]]  # fmt: skip
    for command in commands:
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = capsys.readouterr().out
        assert "``" not in text, command
        description = text.split("\n\n")[1]
        assert not description.startswith(("positional", "options")), (command, text)
