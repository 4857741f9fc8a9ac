"""Ed25519 signer keys and signatures over a constitution checksum.

A signature signs the checksum itself: the 128 lowercase hex digits of the SHA3-512 digest,
as ASCII bytes (see :mod:`.canonical`). Public keys and signatures are written in lowercase
hex (32 and 64 bytes). A key file is JSON, created with mode 0600::

    {"type": "somabrain.signer-key/1", "id": "alice",
     "public_key": "<64 hex>", "private_key": "<64 hex: the Ed25519 seed>"}

and its public half (``<id>.pub``, safe to share) is the same without ``private_key``.
"""

from __future__ import annotations

import binascii
import json
import os
import re
from pathlib import Path
from typing import Any

import msgspec
import nacl.exceptions
import nacl.signing

from ._exceptions import KeyFileError

__all__ = [
    "KEY_FILE_TYPE",
    "PUBLIC_KEY_FILE_TYPE",
    "SIGNER_ID_PATTERN",
    "SignatureEntry",
    "SignerKey",
    "public_key_from_file",
    "verify_signature",
]

KEY_FILE_TYPE = "somabrain.signer-key/1"
PUBLIC_KEY_FILE_TYPE = "somabrain.signer-public-key/1"
SIGNER_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@\-]{0,63}$")


class SignatureEntry(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One signature in a signed constitution.

    ``checksum`` names what the signer signed; it must equal the document's checksum for the
    signature to count (a signature copied from another version names that version's
    checksum, which makes the refusal say so instead of a bare "bad signature").
    """

    signer: str
    checksum: str
    signature: str


def verify_signature(public_key_hex: str, checksum_hex: str, signature_hex: str) -> bool:
    """Does ``signature_hex`` sign ``checksum_hex`` under ``public_key_hex``? Never raises."""
    try:
        key = nacl.signing.VerifyKey(bytes.fromhex(public_key_hex))
        key.verify(checksum_hex.encode("ascii"), bytes.fromhex(signature_hex))
    except (ValueError, TypeError, nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


class SignerKey:
    """A signer's private key, with its id."""

    __slots__ = ("_key", "id")

    def __init__(self, signer_id: str, key: nacl.signing.SigningKey) -> None:
        if not SIGNER_ID_PATTERN.fullmatch(signer_id):
            raise KeyFileError(
                f"signer id {signer_id!r} must be 1-64 letters, digits or _ . @ - "
                "(starting with a letter or digit)"
            )
        self.id = signer_id
        self._key = key

    def __repr__(self) -> str:
        return f"SignerKey({self.id!r}, public_key={self.public_key[:16]}...)"

    @classmethod
    def generate(cls, signer_id: str) -> SignerKey:
        return cls(signer_id, nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, signer_id: str, seed: bytes) -> SignerKey:
        return cls(signer_id, nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> str:
        return bytes(self._key.verify_key).hex()

    def public_entry(self) -> dict[str, str]:
        """This signer as it appears in a constitution's ``signers`` list."""
        return {"id": self.id, "public_key": self.public_key}

    def sign(self, checksum_hex: str) -> SignatureEntry:
        signature = self._key.sign(checksum_hex.encode("ascii")).signature
        return SignatureEntry(signer=self.id, checksum=checksum_hex, signature=signature.hex())

    # ------------------------------------------------------------------ files

    def to_json(self) -> dict[str, str]:
        return {
            "type": KEY_FILE_TYPE,
            "id": self.id,
            "public_key": self.public_key,
            "private_key": bytes(self._key).hex(),
        }

    def public_json(self) -> dict[str, str]:
        return {"type": PUBLIC_KEY_FILE_TYPE, "id": self.id, "public_key": self.public_key}

    def write(self, path: str | os.PathLike[str], *, overwrite: bool = False) -> None:
        """Write the key file (mode 0600, created exclusively unless ``overwrite``) and fsync."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(target, flags, 0o600)
        except FileExistsError:
            raise KeyFileError(f"{target} exists; refusing to overwrite a signer key") from None
        with open(fd, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(target, 0o600)

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> SignerKey:
        """Load a key file; refuses one that other users can read."""
        source = Path(path)
        try:
            mode = source.stat().st_mode
            text = source.read_text("utf-8")
        except OSError as exc:
            raise KeyFileError(f"cannot read signer key {source}: {exc.strerror}") from None
        if _is_public_key_file(text):
            raise KeyFileError(
                f"{source} is a public key file: sign with the private key (<id>.key) of keygen"
            )
        if mode & 0o077:
            raise KeyFileError(
                f"signer key {source} is readable by other users (mode {mode & 0o777:o}); "
                f"run: chmod 600 {source}"
            )
        data = _json_object(text, source)
        if data.get("type") != KEY_FILE_TYPE or "private_key" not in data:
            raise KeyFileError(f"{source} is not a signer key file (type {KEY_FILE_TYPE})")
        try:
            seed = bytes.fromhex(str(data["private_key"]))
            key = cls.from_seed(str(data["id"]), seed)
        except (KeyError, ValueError, nacl.exceptions.ValueError, TypeError) as exc:
            raise KeyFileError(f"{source}: malformed signer key ({exc})") from None
        if data.get("public_key") not in (None, key.public_key):
            raise KeyFileError(f"{source}: public_key does not match private_key")
        return key


def _is_public_key_file(text: str) -> bool:
    try:
        data = json.loads(text)
    except ValueError:
        return False
    return isinstance(data, dict) and data.get("type") == PUBLIC_KEY_FILE_TYPE


def _json_object(text: str, source: Path) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise KeyFileError(f"{source} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise KeyFileError(f"{source} is not a JSON object")
    return data


def public_key_from_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """``{"id", "public_key"}`` from a public key file or a private key file."""
    source = Path(path)
    try:
        data = _json_object(source.read_text("utf-8"), source)
    except OSError as exc:
        raise KeyFileError(f"cannot read {source}: {exc.strerror}") from None
    if data.get("type") not in (KEY_FILE_TYPE, PUBLIC_KEY_FILE_TYPE):
        raise KeyFileError(f"{source} is not a signer key file")
    signer_id, public = str(data.get("id", "")), str(data.get("public_key", ""))
    try:
        if len(binascii.unhexlify(public)) != 32:
            raise ValueError
    except (ValueError, binascii.Error):
        raise KeyFileError(f"{source}: public_key must be 64 hex digits") from None
    return {"id": signer_id, "public_key": public}
