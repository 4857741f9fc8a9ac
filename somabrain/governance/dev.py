"""The dev node's constitution: a dev signer and a dev constitution signed by it.

On the first start of a dev node (``governance.bootstrap = "dev"``, the default) the guardian
creates ``<constitution dir>/dev-signer.key`` (mode 0600) and version 1 of a constitution
whose only signer is that key (threshold 1), with the Rego modules and ``data.json`` of the
policies directory. While that dev signer alone governs, a change to the policies on disk
becomes a new version signed by it at the next start, so editing ``policies/`` and
restarting is enough during development. Once a constitution names other signers, nothing
here signs anything again: changes go through ``somabrain constitution sign``/``publish``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._exceptions import ConstitutionError, KeyFileError
from .canonical import checksum
from .constitution import SignedConstitution, VerifiedConstitution, draft
from .policy import load_policy_dir
from .signing import SignerKey
from .store import DEV_SIGNER_FILE

__all__ = [
    "DEV_ARTICLES",
    "DEV_SIGNER_ID",
    "default_policies_dir",
    "dev_signer",
    "next_dev_version",
    "read_policy_source",
]

DEV_SIGNER_ID = "dev"
DEV_ARTICLES = {
    "title": "SomaBrain dev constitution",
    "notice": "Created by a dev node and signed by its local dev key: not for production.",
}


def default_policies_dir() -> Path:
    """``policies/`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "policies"


def read_policy_source(directory: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """The Rego modules (``*.rego`` but tests) and the policy data (``data.json``)."""
    if not directory.is_dir():
        raise ConstitutionError(
            "missing", f"policies directory {directory} not found: set governance.policies_dir"
        )
    modules = load_policy_dir(str(directory))
    data_file = directory / "data.json"
    try:
        data = json.loads(data_file.read_text("utf-8")) if data_file.exists() else {}
    except ValueError as exc:
        raise ConstitutionError("invalid_policy", f"{data_file} is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConstitutionError("invalid_policy", f"{data_file} must hold a JSON object")
    return modules, data


def dev_signer(directory: Path) -> tuple[SignerKey, bool]:
    """The dev signer key of ``directory``, created on first use; returns (key, created)."""
    path = directory / DEV_SIGNER_FILE
    if path.exists():
        return SignerKey.read(path), False
    key = SignerKey.generate(DEV_SIGNER_ID)
    try:
        key.write(path)
    except KeyFileError:  # another process created it first
        return SignerKey.read(path), False
    return key, True


def _governed_by(key: SignerKey, constitution: VerifiedConstitution) -> bool:
    doc = constitution.doc
    return doc.threshold == 1 and [(s.id, s.public_key) for s in doc.signers] == [
        (key.id, key.public_key)
    ]


def next_dev_version(
    directory: Path, policies_dir: Path, active: VerifiedConstitution | None
) -> tuple[SignedConstitution | None, str]:
    """The dev version to add (signed), or None, and a sentence for the operator."""
    if active is not None and not (directory / DEV_SIGNER_FILE).exists():
        return None, ""
    modules, data = read_policy_source(policies_dir)
    key, created = dev_signer(directory)
    if active is None:
        signed = draft(
            signers=[key.public_entry()],
            threshold=1,
            policy=data,
            policies=modules,
            articles=DEV_ARTICLES,
        )
        return _sign(signed, key), (
            f"created a dev signer ({directory / DEV_SIGNER_FILE}{'' if created else ', reused'})"
            f" and a dev constitution signed by it, from {policies_dir}"
        )
    if not _governed_by(key, active):
        return None, ""
    if active.doc.policies == modules and active.doc.policy == data:
        return None, ""
    signed = draft(
        signers=[key.public_entry()],
        threshold=1,
        policy=data,
        policies=modules,
        articles=active.doc.articles,
        previous=active,
    )
    return _sign(signed, key), (
        f"policies in {policies_dir} changed: signed them into dev constitution "
        f"version {active.version + 1}"
    )


def _sign(signed: SignedConstitution, key: SignerKey) -> SignedConstitution:
    return SignedConstitution(
        document=signed.document, signatures=[key.sign(checksum(signed.document))]
    )
