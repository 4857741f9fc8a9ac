"""The constitution history on disk: one signed JSON file per version.

``<directory>/v000001-<first 16 hex of the checksum>.json`` and so on; a file is written to
a temporary name, fsynced and renamed, so a crash never leaves half a version behind. Files
are read in version order and verified as a chain by the guardian
(:func:`.constitution.verify_chain`): editing, removing or inserting one is detected.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec

from ._exceptions import ConstitutionError
from .constitution import SignedConstitution, VerifiedConstitution, parse_signed

__all__ = ["DEV_SIGNER_FILE", "file_name", "read_history", "write_version"]

DEV_SIGNER_FILE = "dev-signer.key"
_VERSION_FILE = re.compile(r"^v(\d{6,})-[0-9a-f]{16}\.json$")


def file_name(verified: VerifiedConstitution) -> str:
    return f"v{verified.version:06d}-{verified.checksum[:16]}.json"


def read_history(directory: Path) -> list[SignedConstitution]:
    """Every stored version, in version order (not verified: the caller verifies)."""
    if not directory.is_dir():
        return []
    found: list[tuple[int, str, Path]] = []
    for path in directory.iterdir():
        match = _VERSION_FILE.match(path.name)
        if match:
            found.append((int(match.group(1)), path.name, path))
    found.sort()
    history = []
    for version, name, path in found:
        try:
            signed = parse_signed(path.read_bytes())
        except ConstitutionError as exc:
            raise ConstitutionError(exc.code, f"{name}: {exc}") from None
        stored = signed.document.get("version")
        if stored != version:
            raise ConstitutionError(
                "malformed", f"{name} holds version {stored!r}, its name says {version}"
            )
        history.append(signed)
    return history


def write_version(directory: Path, verified: VerifiedConstitution) -> Path:
    """Store one verified version durably; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / file_name(verified)
    data = msgspec.json.format(msgspec.json.encode(verified.signed()), indent=2) + b"\n"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, target)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return target
