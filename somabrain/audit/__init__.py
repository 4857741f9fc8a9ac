"""Audit: events (schema v2), the per-node hash chain, the writer and its cascade
(Kafka -> Redis Stream -> local spool), and chain verification.

Other parts of SomaBrain use one call::

    audit_id = await system.resources["audit"].record(
        AuditDraft(tenant=t, actor=sub, action="memory.remember", decision="allow",
                   trace_id=trace, request=request_meta(method="POST", path=path,
                   status=200, content=body, attributes={"key": key})))

It returns once the event is durable somewhere (see :mod:`.writer`).
"""

from .chain import Chain, ChainProblem, ChainReport, verify
from .client import AuditLog, Receipt
from .errors import AuditError, AuditUnavailableError, SinkUnavailableError, SpoolCorruptError
from .event import (
    GENESIS,
    SCHEMA,
    AuditDraft,
    AuditEvent,
    RequestMeta,
    content_digest,
    decode_event,
    encode_event,
    event_hash,
    request_meta,
)
from .settings import AuditSettings

__all__ = [
    "GENESIS",
    "SCHEMA",
    "AuditDraft",
    "AuditError",
    "AuditEvent",
    "AuditLog",
    "AuditSettings",
    "AuditUnavailableError",
    "Chain",
    "ChainProblem",
    "ChainReport",
    "Receipt",
    "RequestMeta",
    "SinkUnavailableError",
    "SpoolCorruptError",
    "content_digest",
    "decode_event",
    "encode_event",
    "event_hash",
    "request_meta",
    "verify",
]
