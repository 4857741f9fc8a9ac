"""The HTTP error model: ``{"error": {"code", "message", "field"?, "trace_id"?}}``.

Every refusal of the edge is an :class:`HTTPError` carrying its status, a stable machine code,
a message for people and, when one field of the request is at fault, its path in the JSON body
(``top_k``, ``items[3].content``). The hierarchy of statuses (see ``docs/edge.md``)::

    400  malformed_json, invalid_tenant, tenant_required, tenant_conflict, bad_request
    401  missing_token, invalid_token, token_expired
    403  tenant_forbidden, insufficient_scope
    404  not_found, memory_not_found, actor_not_found
    405  method_not_allowed
    409  not_running, refused
    413  payload_too_large
    415  unsupported_media_type
    422  invalid_field, missing_field, unknown_field, out_of_range, batch_too_large,
         invalid_config
    429  rate_limited                       (with Retry-After)
    503  not_ready, unavailable, timeout, overloaded, storage_unavailable
                                            (with Retry-After)
    500  internal                           (logged with the trace id; never for bad input)

msgspec names the bad field in its messages (``Expected `int`, got `str` - at `$.top_k```);
:func:`from_validation` turns that path into the ``field`` of the error.
"""

from __future__ import annotations

import re

import msgspec

__all__ = [
    "ErrorBody",
    "ErrorResponse",
    "HTTPError",
    "encode_error",
    "from_decode_error",
    "from_validation",
]


class ErrorBody(msgspec.Struct, kw_only=True, omit_defaults=True):
    code: str
    message: str
    field: str | None = None
    trace_id: str | None = None


class ErrorResponse(msgspec.Struct):
    error: ErrorBody


class HTTPError(Exception):
    """A request the edge refuses, with everything needed to answer it."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.headers = headers

    def __repr__(self) -> str:
        return f"HTTPError({self.status}, {self.code!r}, {self.message!r}, field={self.field!r})"

    @classmethod
    def retry_later(cls, status: int, code: str, message: str, seconds: float) -> HTTPError:
        """An error with ``Retry-After`` (whole seconds, at least 1)."""
        after = max(1, int(-(-seconds // 1)))
        return cls(status, code, message, headers=((b"retry-after", str(after).encode()),))


_ENCODER = msgspec.json.Encoder()


def encode_error(error: HTTPError, trace_id: str | None) -> bytes:
    body = ErrorBody(code=error.code, message=error.message, field=error.field, trace_id=trace_id)
    return _ENCODER.encode(ErrorResponse(body))


# "... - at `$.items[0].content`": the message, then where.
_AT = re.compile(r"^(?P<message>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
#: How msgspec words ``schemas.NOT_BLANK`` (the pattern's repr).
_BLANK = re.compile(r"matching regex '\\\\S'")
_NAMED = re.compile(r"^Object (?:missing required|contains unknown) field `(?P<name>[^`]*)`")


def _join(path: str, name: str) -> str:
    path = path.removeprefix(".")
    if not name:
        return path
    return f"{path}.{name}" if path else name


def from_validation(error: msgspec.ValidationError, *, prefix: str = "") -> HTTPError:
    """422 naming the field msgspec complained about (``prefix`` for nested documents)."""
    text = str(error)
    match = _AT.match(text)
    message = match.group("message") if match else text
    path = (match.group("path") if match else None) or ""
    message = _BLANK.sub("that is not blank", message)
    named = _NAMED.match(message)
    field = _join(path, named.group("name") if named else "")
    if prefix:
        field = _join(prefix, field)
    if message.startswith("Object missing required field"):
        code = "missing_field"
    elif message.startswith("Object contains unknown field"):
        code = "unknown_field"
    elif re.search(r" [<>]=? ", message):  # "Expected `int` <= 100", "of length >= 1"
        code = "out_of_range"
    else:
        code = "invalid_field"
    where = f" (at {field})" if field and not named else ""
    return HTTPError(422, code, f"{message}{where}", field=field or None)


def from_decode_error(error: msgspec.DecodeError) -> HTTPError:
    """400 for a body that is not JSON at all (truncated, bad syntax, not UTF-8)."""
    return HTTPError(400, "malformed_json", f"request body is not valid JSON: {error}")
