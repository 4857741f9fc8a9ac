"""Signatures, thresholds, tampering and rotation: each refusal names its reason."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from somabrain.governance import (
    ConstitutionError,
    SignedConstitution,
    SignerKey,
    checksum,
    parse_signed,
    verify,
    verify_chain,
)
from somabrain.governance.signing import SignatureEntry, verify_signature
from tests.governance.helpers import genesis, key, keys, make, sign


def codes(exc: pytest.ExceptionInfo[ConstitutionError]) -> list[str]:
    return [f.code for f in exc.value.failures]


def test_k_of_n_signatures_verify() -> None:
    verified = verify(make("abc", 2))
    assert verified.version == 1
    assert verified.signed_by == ("a", "b")
    assert verified.checksum == checksum(verified.document)
    assert verify(make("abc", 2, sign_with="abc")).signed_by == ("a", "b", "c")


def test_signature_signs_the_checksum_hex() -> None:
    signed = make("a", 1)
    entry = signed.signatures[0]
    digest = checksum(signed.document)
    assert entry.checksum == digest
    assert verify_signature(key("a").public_key, digest, entry.signature)
    assert not verify_signature(key("b").public_key, digest, entry.signature)
    assert not verify_signature("zz", digest, entry.signature)


def test_k_minus_one_signatures_are_refused() -> None:
    with pytest.raises(ConstitutionError) as exc:
        verify(make("abc", 3, sign_with="ab"))
    assert exc.value.code == "insufficient_signatures"
    assert "2 valid signature(s) of the 3 required" in str(exc.value)


def test_duplicate_signatures_from_one_signer_count_once() -> None:
    signed = make("abc", 2, sign_with="a")
    doubled = sign(signed, [key("a")])
    with pytest.raises(ConstitutionError) as exc:
        verify(doubled)
    assert exc.value.code == "insufficient_signatures"
    assert codes(exc) == ["duplicate_signer"]
    assert "'a' already signed" in str(exc.value)


def test_unknown_signer_does_not_count() -> None:
    signed = make("abc", 2, sign_with="a")
    with pytest.raises(ConstitutionError) as exc:
        verify(sign(signed, [key("h")]))
    assert exc.value.code == "insufficient_signatures"
    assert codes(exc) == ["unknown_signer"]
    assert "'h' is not a signer" in str(exc.value)


def test_signature_reused_from_another_version_is_refused() -> None:
    v1 = genesis()
    v2 = make("abc", 2, sign_with="", previous=v1)
    reused = SignedConstitution(document=v2.document, signatures=list(v1.signatures))
    with pytest.raises(ConstitutionError) as exc:
        verify(reused, previous=v1)
    assert exc.value.code == "insufficient_signatures"
    assert codes(exc) == ["wrong_checksum", "wrong_checksum"]
    assert f"signs checksum {v1.checksum[:16]}" in str(exc.value)
    # relabelling the reused signature with the new checksum does not help either
    relabelled = SignedConstitution(
        document=v2.document,
        signatures=[
            SignatureEntry(signer=s.signer, checksum=checksum(v2.document), signature=s.signature)
            for s in v1.signatures
        ],
    )
    with pytest.raises(ConstitutionError) as exc:
        verify(relabelled, previous=v1)
    assert codes(exc) == ["bad_signature", "bad_signature"]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every leaf of a JSON document, as a key path."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _paths(v, (*prefix, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _paths(v, (*prefix, i))]
    return [prefix]


def _flip(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("x" if not value.endswith("x") else "y") if value else "x"
    return "x"  # None


def test_a_changed_byte_in_any_field_is_refused() -> None:
    signed = make("abc", 2)
    leaves = _paths(signed.document)
    assert len(leaves) > 20
    for path in leaves:
        document = copy.deepcopy(signed.document)
        target = document
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = _flip(target[path[-1]])
        tampered = SignedConstitution(document=document, signatures=signed.signatures)
        with pytest.raises(ConstitutionError) as exc:
            verify(tampered)
        assert exc.value.code in {"insufficient_signatures", "invalid_field"}, path
        if exc.value.code == "insufficient_signatures":
            assert set(codes(exc)) <= {"wrong_checksum", "unknown_signer"}, path


def test_a_changed_byte_in_the_file_is_refused() -> None:
    raw = msgspec.json.encode(make("abc", 2))
    refused = 0
    start = raw.index(b'"document"')
    for i in range(start + 12, len(raw), 97):  # every 97th byte of the document and signatures
        tampered = bytearray(raw)
        tampered[i] = ord("A") if raw[i] != ord("A") else ord("B")
        try:
            verify(bytes(tampered))
        except ConstitutionError:
            refused += 1
        else:  # pragma: no cover - would be a forgery
            pytest.fail(f"byte {i} changed and the document still verified")
    assert refused > 10


def test_a_document_added_key_is_refused() -> None:
    signed = make("abc", 2)
    document = {**signed.document, "extra": 1}
    with pytest.raises(ConstitutionError) as exc:
        verify(SignedConstitution(document=document, signatures=signed.signatures))
    assert exc.value.code == "invalid_field"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 4}, "threshold 4 exceeds the 3 signers"),
        ({"threshold": 0}, "Expected `int` >= 1"),
        ({"version": 0}, "Expected `int` >= 1"),
        ({"format": "other"}, "Invalid enum value 'other'"),
        ({"previous": "ab" * 64}, "version 1 has no previous"),
    ],
)
def test_invalid_fields_are_named(change: dict[str, Any], message: str) -> None:
    signed = make("abc", 2)
    with pytest.raises(ConstitutionError) as exc:
        verify(SignedConstitution(document={**signed.document, **change}, signatures=[]))
    assert exc.value.code == "invalid_field"
    assert message in str(exc.value)


def test_duplicate_signer_ids_in_the_set_are_refused() -> None:
    signed = make("abc", 2)
    document = copy.deepcopy(signed.document)
    document["signers"][1]["id"] = "a"
    with pytest.raises(ConstitutionError, match="signer ids must be distinct"):
        verify(SignedConstitution(document=document, signatures=[]))


def test_malformed_json_is_refused() -> None:
    with pytest.raises(ConstitutionError) as exc:
        verify(b"{not json")
    assert exc.value.code == "malformed"
    with pytest.raises(ConstitutionError) as exc:
        verify({"document": {}, "signatures": [], "x": 1})
    assert exc.value.code == "malformed"


# ------------------------------------------------------------------------------ rotation


def test_successor_with_the_same_signers() -> None:
    v1 = genesis()
    v2 = verify(make("abc", 2, sign_with="bc", previous=v1), previous=v1)
    assert (v2.version, v2.doc.previous) == (2, v1.checksum)
    assert verify_chain([v1.signed(), v2.signed()])[-1].checksum == v2.checksum


def test_rotation_signed_by_k_previous_signers_is_accepted() -> None:
    v1 = genesis()  # signers abc, k=2
    rotated = make("cde", 2, sign_with="cde", previous=v1)
    with pytest.raises(ConstitutionError) as exc:
        verify(rotated, previous=v1)  # only c of the previous signers signed
    assert exc.value.code == "rotation_not_approved"
    approved = sign(rotated, keys("a"))
    v2 = verify(approved, previous=v1)
    assert v2.doc.threshold == 2
    assert {s.id for s in v2.doc.signers} == set("cde")


def test_rotation_signed_only_by_the_new_signers_is_refused() -> None:
    v1 = genesis()
    rotated = make("def", 2, sign_with="def", previous=v1)
    with pytest.raises(ConstitutionError) as exc:
        verify(rotated, previous=v1)
    assert exc.value.code == "rotation_not_approved"
    assert codes(exc) == ["unknown_signer"] * 3
    assert "needs 2 signature(s) of version 1's signers, has 0" in str(exc.value)


def test_changing_only_the_threshold_is_a_rotation() -> None:
    v1 = genesis()  # abc, k=2
    lowered = make("abc", 1, sign_with="a", previous=v1)
    with pytest.raises(ConstitutionError) as exc:
        verify(lowered, previous=v1)
    assert exc.value.code == "rotation_not_approved"
    assert verify(sign(lowered, keys("b")), previous=v1).doc.threshold == 1


def test_a_key_change_under_the_same_id_is_a_rotation() -> None:
    v1 = genesis()
    impostor = SignerKey.from_seed("a", b"\x99" * 32)
    document = make("abc", 2, sign_with="", previous=v1).document
    document["signers"][0]["public_key"] = impostor.public_key
    forged = sign(SignedConstitution(document=document), [impostor, key("h")])
    with pytest.raises(ConstitutionError) as exc:
        verify(forged, previous=v1)
    assert exc.value.code == "insufficient_signatures"  # h is not a signer at all
    forged = sign(SignedConstitution(document=document), [impostor, key("b")])
    with pytest.raises(ConstitutionError) as exc:
        verify(forged, previous=v1)
    assert exc.value.code == "rotation_not_approved"
    assert codes(exc) == ["bad_signature"]  # "a" under the old key did not sign this


@pytest.mark.parametrize(
    ("version_offset", "code"), [(0, "version_conflict"), (-1, "version_not_newer")]
)
def test_versions_must_increase(version_offset: int, code: str) -> None:
    v1 = genesis()
    v2 = verify(make(previous=v1), previous=v1)
    v3 = verify(make(previous=v2), previous=v2)
    document = {**make(previous=v3).document, "version": v3.version + version_offset}
    with pytest.raises(ConstitutionError) as exc:
        verify(sign(SignedConstitution(document=document), keys("ab")), previous=v3)
    assert exc.value.code == code


def test_successor_must_name_the_active_checksum() -> None:
    v1 = genesis()
    v2 = verify(make(previous=v1), previous=v1)
    fork = make(previous=v1)  # a second version 2 ... presented after v2 as version 3
    document = {**fork.document, "version": 3}
    with pytest.raises(ConstitutionError) as exc:
        verify(sign(SignedConstitution(document=document), keys("ab")), previous=v2)
    assert exc.value.code == "wrong_previous"


def test_chain_verification_and_genesis_pin() -> None:
    v1 = genesis()
    v2 = verify(make("cd", 1, sign_with="abc", previous=v1), previous=v1)
    chain = verify_chain([v1.signed(), v2.signed()], genesis=v1.checksum)
    assert [c.version for c in chain] == [1, 2]
    with pytest.raises(ConstitutionError) as exc:
        verify_chain([v1.signed()], genesis="0" * 128)
    assert exc.value.code == "genesis_mismatch"
    with pytest.raises(ConstitutionError) as exc:
        verify_chain([v2.signed()])
    assert exc.value.code == "wrong_previous"


def test_signed_constitution_round_trips_through_json() -> None:
    signed = make()
    text = json.dumps(msgspec.to_builtins(signed))
    assert verify(parse_signed(text)).checksum == verify(signed).checksum


@settings(max_examples=40, deadline=None)
@given(
    threshold=st.integers(min_value=1, max_value=4),
    signing=st.lists(st.sampled_from("abcdh"), max_size=8),
)
def test_valid_iff_k_distinct_members_signed(threshold: int, signing: list[str]) -> None:
    signed = make("abcd", threshold, sign_with="")
    signed = sign(signed, [key(n) for n in signing])
    members = {n for n in signing if n in "abcd"}
    if len(members) >= threshold:
        assert set(verify(signed).signed_by) == members
    else:
        with pytest.raises(ConstitutionError) as exc:
            verify(signed)
        assert exc.value.code == "insufficient_signatures"
        expected = len(signing) - len(members)  # duplicates and unknown signers
        assert len(exc.value.failures) == expected
