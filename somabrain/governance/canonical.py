"""Canonical JSON and the constitution checksum.

The checksum of a constitution is ``SHA3-512(canonical_json(document))``, written as 128
lowercase hexadecimal digits. Canonical JSON here is RFC 8785 (the JSON Canonicalization
Scheme, "JCS"), so any implementation of JCS reproduces it byte for byte:

* objects: members sorted by key, comparing the keys as UTF-16 code units (for keys in the
  Basic Multilingual Plane this is plain code-point order); keys must be strings;
* no whitespace at all: separators are ``,`` and ``:``;
* strings: UTF-8, not ASCII-escaped; only ``"``, ``\\`` and the control characters U+0000 to
  U+001F are escaped, as ``\\b \\t \\n \\f \\r`` or ``\\u00xx`` (lowercase hex);
* numbers: as ECMAScript's ``Number.prototype.toString`` writes them (``1.0`` -> ``1``,
  ``1e21`` -> ``1e+21``, ``1e-7`` -> ``1e-7``, ``0.000001`` -> ``0.000001``): every number is
  an IEEE double, so an integer beyond 2**53 that is not written as its double would be
  (``2**53 + 1``) is refused rather than silently rounded, and so are NaN and the infinities;
* ``true``, ``false``, ``null`` as such.

To check a checksum by hand with the reference tools::

    python -c 'import json,sys; from somabrain.governance.canonical import checksum; \\
               print(checksum(json.load(sys.stdin)["document"]))' < constitution.json

or with any JCS library: ``sha3_512(jcs(document)).hexdigest()``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

__all__ = [
    "CHECKSUM_HEX_LENGTH",
    "MAX_SAFE_INTEGER",
    "CanonicalJSONError",
    "canonical_json",
    "checksum",
    "checksum_bytes",
]

MAX_SAFE_INTEGER = 2**53 - 1
CHECKSUM_HEX_LENGTH = 128


class CanonicalJSONError(ValueError):
    """A value that has no canonical JSON form (NaN, a non-string key, a huge integer...)."""


_escape_string = json.JSONEncoder(ensure_ascii=False).encode


def _number(value: float) -> str:
    """ECMAScript Number::toString for a finite double (RFC 8785, section 3.2.2.3)."""
    if value == 0:
        return "0"  # also -0
    # repr gives the shortest digits that round-trip, as ECMAScript does; only the layout
    # differs. value = 0.d1d2...dk * 10**n
    sign, digit_tuple, exponent = Decimal(repr(value)).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).lstrip("0")
    n = len(digits) + exponent
    digits = digits.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        head = digits[0] + ("." + digits[1:] if k > 1 else "")
        text = f"{head}e{'+' if e >= 0 else '-'}{abs(e)}"
    return "-" + text if sign else text


def _encode(value: Any, out: list[str], path: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_escape_string(value))
    elif isinstance(value, int):
        if abs(value) <= MAX_SAFE_INTEGER:
            out.append(str(value))
        elif abs(value) < 2**1024 and _number(float(value)) == str(value):
            out.append(str(value))  # the canonical text of a double: the same number
        else:
            raise CanonicalJSONError(
                f"integer at {path} is not the canonical text of a double: {value}"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise CanonicalJSONError(f"number at {path} is not finite: {value!r}")
        out.append(_number(value))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise CanonicalJSONError(f"object key at {path} is not a string: {key!r}")
        out.append("{")
        first = True
        for key in sorted(value, key=lambda k: k.encode("utf-16-be")):
            if not first:
                out.append(",")
            first = False
            out.append(_escape_string(key))
            out.append(":")
            _encode(value[key], out, f"{path}.{key}")
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out, f"{path}[{i}]")
        out.append("]")
    else:
        raise CanonicalJSONError(f"value at {path} is not JSON: {type(value).__name__}")


def canonical_json(value: Any) -> bytes:
    """The RFC 8785 canonical form of a JSON value, as UTF-8 bytes."""
    out: list[str] = []
    _encode(value, out, "$")
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError as exc:  # a lone surrogate in a string
        raise CanonicalJSONError(f"string is not valid Unicode: {exc.reason}") from None


def checksum_bytes(value: Any) -> bytes:
    """The 64-byte SHA3-512 digest of ``canonical_json(value)``."""
    return hashlib.sha3_512(canonical_json(value)).digest()


def checksum(value: Any) -> str:
    """SHA3-512 of the canonical JSON of ``value``, as 128 lowercase hex digits."""
    return hashlib.sha3_512(canonical_json(value)).hexdigest()
