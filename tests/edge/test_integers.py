"""Integers outside msgpack's range are found, with the field that holds them, before
anything is written (``somabrain.edge.integers``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest

from somabrain.edge import schemas as s
from somabrain.edge.integers import INT_MAX, INT_MIN, WideInt, find_wide_int

from .test_app import error_of, harness

pytestmark = pytest.mark.anyio

WIDE = 123456789012345678901234567890


def wide_int_of(body: dict[str, Any], kind: type = s.RememberRequest) -> WideInt | None:
    raw = msgspec.json.encode(body)
    return find_wide_int(raw, msgspec.json.decode(raw, type=kind))


def test_the_range_is_what_msgpack_encodes() -> None:
    msgspec.msgpack.encode([INT_MIN, INT_MAX])
    for beyond in (INT_MIN - 1, INT_MAX + 1):
        with pytest.raises(OverflowError):
            msgspec.msgpack.encode(beyond)


@pytest.mark.parametrize(
    ("body", "kind", "found"),
    [
        ({"content": "a", "meta": {"n": WIDE}}, s.RememberRequest, ("meta", "meta.n")),
        ({"content": "a", "meta": {"n": INT_MAX + 1}}, s.RememberRequest, ("meta", "meta.n")),
        ({"content": "a", "meta": {"n": INT_MIN - 1}}, s.RememberRequest, ("meta", "meta.n")),
        (
            {"content": "a", "value": {"list": [1, {"deep": -WIDE}]}},
            s.RememberRequest,
            ("value", "value.list[1].deep"),
        ),
        (
            {"items": [{"content": "a"}, {"content": "b", "meta": {"n": WIDE}}]},
            s.RememberBatchRequest,
            ("items[1].meta", "items[1].meta.n"),
        ),
        ({"query": "q", "filters": {"n": WIDE}}, s.RecallRequest, ("filters", "filters.n")),
    ],
)
def test_a_wide_int_is_named_by_its_field(
    body: dict[str, Any], kind: type, found: tuple[str, str]
) -> None:
    assert wide_int_of(body, kind) == WideInt(*found)


def test_integers_in_range_and_long_strings_pass() -> None:
    meta = {"max": INT_MAX, "min": INT_MIN, "digits": "1234567890123456789012345", "f": 1.5e300}
    assert wide_int_of({"content": "1234567890123456789012345", "meta": meta}) is None
    assert wide_int_of({"content": "a", "meta": {"n": 10**18}}) is None


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/memory/remember", {"content": "a", "key": "k", "meta": {"n": WIDE}}, "meta"),
        ("/memory/remember", {"content": "a", "key": "k", "value": {"n": [WIDE]}}, "value"),
        (
            "/memory/remember/batch",
            {"items": [{"content": "a", "key": "k"}, {"content": "b", "meta": {"n": -WIDE}}]},
            "items[1].meta",
        ),
        ("/memory/recall", {"query": "a", "filters": {"n": WIDE}}, "filters"),
        ("/context/evaluate", {"query": "a", "filters": {"meta": {"n": WIDE}}}, "filters"),
        (
            "/context/feedback",
            {"session_id": "s", "query": "q", "metadata": {"n": WIDE}},
            "metadata",
        ),
        (
            "/context/feedback",
            {"session_id": "s", "query": "q", "tokens": {"prompt_tokens": WIDE}},
            "tokens.prompt_tokens",
        ),
    ],
)
async def test_a_wide_int_is_a_422_and_nothing_is_stored(
    tmp_path: Path, path: str, body: dict[str, Any], field: str
) -> None:
    async with harness(tmp_path) as h, h.client() as client:
        r = await client.post(path, json=body)
        assert r.status_code == 422, r.text
        error = error_of(r)
        assert (error["code"], error["field"]) == ("out_of_range", field)
        assert (await client.get("/memory/k")).status_code == 404


async def test_the_widest_storable_integers_round_trip(tmp_path: Path) -> None:
    meta = {"max": INT_MAX, "min": INT_MIN}
    async with harness(tmp_path) as h, h.client() as client:
        r = await client.post("/memory/remember", json={"content": "a", "key": "k", "meta": meta})
        assert r.status_code == 200, r.text
        assert (await client.get("/memory/k")).json()["meta"] == meta
