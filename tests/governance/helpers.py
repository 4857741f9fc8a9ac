"""Builders for signed constitutions used by the governance tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from somabrain.governance import SignedConstitution, SignerKey, checksum, draft, verify
from somabrain.governance.constitution import VerifiedConstitution
from somabrain.governance.dev import default_policies_dir, read_policy_source

MODULES, DATA = read_policy_source(default_policies_dir())

_SEEDS = {name: bytes([i + 1]) * 32 for i, name in enumerate("abcdefgh")}


def key(name: str) -> SignerKey:
    """Deterministic keys (seeded), so tests are reproducible and fast."""
    return SignerKey.from_seed(name, _SEEDS[name])


def keys(names: str) -> list[SignerKey]:
    return [key(n) for n in names]


def sign(signed: SignedConstitution, signers: Sequence[SignerKey]) -> SignedConstitution:
    digest = checksum(signed.document)
    return SignedConstitution(
        document=signed.document,
        signatures=[*signed.signatures, *(k.sign(digest) for k in signers)],
    )


def make(
    signers: str = "abc",
    threshold: int = 2,
    sign_with: str | None = None,
    previous: VerifiedConstitution | None = None,
    policy: dict[str, Any] | None = None,
    policies: dict[str, str] | None = None,
) -> SignedConstitution:
    doc = draft(
        signers=[k.public_entry() for k in keys(signers)],
        threshold=threshold,
        policy=DATA if policy is None else policy,
        policies=MODULES if policies is None else policies,
        articles={"1": "Remember faithfully."},
        previous=previous,
    )
    return sign(doc, keys(signers[:threshold] if sign_with is None else sign_with))


def genesis() -> VerifiedConstitution:
    return verify(make())
