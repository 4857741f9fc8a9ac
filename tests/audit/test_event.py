"""The event model against its JSON Schema (the source of truth) and the canonical form."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from pathlib import Path
from unittest import mock

import jsonschema
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from somabrain.audit import (
    GENESIS,
    AuditDraft,
    AuditEvent,
    Chain,
    RequestMeta,
    content_digest,
    decode_event,
    encode_event,
    event_hash,
    request_meta,
)
from somabrain.audit.event import canonical, utc_now
from tests.audit.strategies import drafts

SCHEMA = json.loads(
    (Path(__file__).parents[2] / "schemas" / "audit_event_v2.json").read_text("utf-8")
)
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


def test_struct_fields_are_exactly_the_schema_properties() -> None:
    fields = set(AuditEvent.__struct_fields__)
    assert fields == set(SCHEMA["properties"]) == set(SCHEMA["required"])
    request = SCHEMA["$defs"]["request"]
    meta_fields = {f.name for f in msgspec.structs.fields(RequestMeta)}
    assert meta_fields == set(request["properties"]) == set(request["required"])


@settings(max_examples=200, deadline=None)
@given(drafts())
def test_sealed_events_validate_against_the_schema(draft: AuditDraft) -> None:
    event = Chain("node-1").seal(draft)
    document = json.loads(encode_event(event))
    VALIDATOR.validate(document)
    assert decode_event(encode_event(event)) == event


@settings(max_examples=300, deadline=None)
@given(drafts())
def test_canonical_form_is_sorted_compact_utf8_json(draft: AuditDraft) -> None:
    """Anyone can recompute a hash with a stock JSON library: msgspec's canonical bytes are
    exactly what json.dumps prints with sorted keys and no whitespace."""
    event = Chain("n").seal(draft)
    document = json.loads(encode_event(event))
    document["hash"] = ""
    expected = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical(event) == expected.encode("utf-8")


def test_genesis_and_first_link() -> None:
    chain = Chain("n")
    first = chain.seal(AuditDraft(tenant="t", actor="a", action="memory.remember"))
    second = chain.seal(AuditDraft(tenant="t", actor="a", action="memory.recall"))
    assert (first.seq, first.prev_hash) == (1, GENESIS)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    assert event_hash(second) == second.hash


def test_keyed_chain_needs_the_key() -> None:
    event = Chain("n", key=b"k1").seal(AuditDraft(tenant="t", actor="a", action="x"))
    assert event_hash(event, b"k1") == event.hash
    assert event_hash(event) != event.hash
    assert event_hash(event, b"k2") != event.hash


def test_request_meta_redacts_secrets_and_hashes_content() -> None:
    meta = request_meta(
        method="POST",
        path="/memory/remember",
        content="the secret diary",
        attributes={
            "Authorization": "Bearer abc",
            "api_key": "xyz",
            "x-refresh-token": "t",
            "key": "k1",
            "long": "y" * 1000,
            "count": 3,
            "obj": {"a": 1},
        },
    )
    attrs = meta.attributes
    assert attrs["Authorization"] == attrs["api_key"] == attrs["x-refresh-token"] == "[redacted]"
    assert attrs["key"] == "k1" and attrs["count"] == 3
    assert attrs["long"] == "sha256:" + content_digest("y" * 1000)[0]
    assert attrs["obj"] == "{'a': 1}"
    assert (meta.content_sha256, meta.content_bytes) == content_digest("the secret diary")
    assert (
        "secret diary"
        not in encode_event(
            Chain("n").seal(AuditDraft(tenant="t", actor="a", action="x", request=meta))
        ).decode()
    )


@settings(max_examples=300, deadline=None)
@given(drafts(), st.sampled_from([None, b"chain-key"]))
def test_sealing_encodes_once_exactly_as_encode_event(draft: AuditDraft, key: bytes | None) -> None:
    """The writer's one-pass seal (hash spliced into the canonical text) is the event's wire
    form, whatever the attributes hold (a nested ``hash`` key, quotes...)."""
    draft = msgspec.structs.replace(
        draft,
        request=msgspec.structs.replace(
            draft.request, attributes={**draft.request.attributes, "hash": ""}
        ),
        reason=draft.reason + '"hash":""',
    )
    event, payload = Chain("n", key=key).seal_encoded(draft)
    assert payload == encode_event(event)
    assert event.hash == event_hash(event, key)


def test_request_meta_remembers_which_names_are_secret() -> None:
    for _ in range(2):  # the second time from the cache
        attrs = request_meta(attributes={"password": "p", "keys": "k1,k2"}).attributes
        assert attrs == {"keys": "k1,k2", "password": "[redacted]"}


def _utc_now_at(now: float) -> str:
    with mock.patch.object(time, "time", return_value=now):
        return utc_now()


@given(st.floats(min_value=0, max_value=4102444799.0, allow_nan=False))
@settings(max_examples=200)
def test_utc_now_is_the_clock_in_rfc3339_utc_to_the_microsecond(now: float) -> None:
    text = _utc_now_at(now)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", text), text
    parsed = dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    assert abs(parsed.timestamp() - now) <= 0.5e-6 + 1e-6  # rounding, plus float slack


def test_utc_now_rounds_to_the_microsecond_and_carries_into_the_next_second() -> None:
    assert _utc_now_at(1_700_000_000.75) == "2023-11-14T22:13:20.750000Z"
    assert _utc_now_at(1_700_000_001.000002) == "2023-11-14T22:13:21.000002Z"
    assert _utc_now_at(1_700_000_001.9999999) == "2023-11-14T22:13:22.000000Z"
    assert _utc_now_at(1_700_000_002.5) == "2023-11-14T22:13:22.500000Z"  # the cached second
