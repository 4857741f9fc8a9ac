"""Canonical JSON (RFC 8785) and the SHA3-512 checksum: vectors and properties."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from somabrain.governance.canonical import (
    MAX_SAFE_INTEGER,
    CanonicalJSONError,
    canonical_json,
    checksum,
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0, "0"),
        (-0.0, "0"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (0.3, "0.3"),
        (1e21, "1e+21"),
        (1e20, "100000000000000000000"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (333333333.3333333, "333333333.3333333"),
        (9007199254740991, "9007199254740991"),
    ],
)
def test_numbers_are_written_as_ecmascript_does(value: float, expected: str) -> None:
    assert canonical_json(value).decode() == expected


def test_rfc8785_layout() -> None:
    value = {"b": [1, 2.5, None, True, False], "a": 'é\n\u2028\x01"\\/', "c": {}}
    assert canonical_json(value) == (
        '{"a":"é\\n\u2028\\u0001\\"\\\\/","b":[1,2.5,null,true,false],"c":{}}'.encode()
    )


def test_keys_sort_by_utf16_code_units() -> None:
    # U+1F600 is D83D DE00 in UTF-16: before U+E000, although its code point is larger.
    assert canonical_json({"\ue000": 1, "\U0001f600": 2, "a": 3}).decode() == (
        '{"a":3,"\U0001f600":2,"\ue000":1}'
    )


@pytest.mark.parametrize(
    "bad",
    [math.nan, math.inf, {1: "x"}, 2**53 + 1, b"bytes", {"a": {1, 2}}, "\ud800"],
)
def test_values_without_a_canonical_form_are_refused(bad: Any) -> None:
    with pytest.raises(CanonicalJSONError):
        canonical_json(bad)


def test_checksum_is_sha3_512_of_the_canonical_bytes() -> None:
    document = {"version": 1, "threshold": 2}
    expected = hashlib.sha3_512(b'{"threshold":2,"version":1}').hexdigest()
    assert checksum(document) == expected
    assert len(expected) == 128


@given(json_values)
def test_canonical_json_is_valid_json_that_round_trips(value: Any) -> None:
    text = canonical_json(value)
    # beyond 2**53 every number is a double: compare as doubles
    parsed = json.loads(text, parse_int=lambda s: int(s) if len(s) < 16 else float(s))
    assert parsed == value or _has_negative_zero(value)


@given(json_values)
def test_canonical_form_is_a_fixed_point(value: Any) -> None:
    once = canonical_json(value)
    assert canonical_json(json.loads(once)) == once


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=8))
def test_checksum_ignores_key_order_and_whitespace(value: dict[str, Any]) -> None:
    reordered = dict(reversed(list(value.items())))
    pretty = json.loads(json.dumps(value, indent=3))
    assert checksum(value) == checksum(reordered) == checksum(pretty)


@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(), min_size=1, max_size=8))
def test_any_changed_value_changes_the_checksum(value: dict[str, str]) -> None:
    key = sorted(value)[0]
    changed = {**value, key: value[key] + "x"}
    assert checksum(changed) != checksum(value)


def _has_negative_zero(value: Any) -> bool:
    if isinstance(value, float):
        return value == 0 and math.copysign(1, value) < 0
    if isinstance(value, list):
        return any(_has_negative_zero(v) for v in value)
    if isinstance(value, dict):
        return any(_has_negative_zero(v) for v in value.values())
    return False
