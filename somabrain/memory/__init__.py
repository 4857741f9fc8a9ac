"""Per-tenant memory: data model, embedder, indexes, durable log and tenant state.

The modules below are pure logic and local storage (no actors, no HTTP, importable without a
running node); the memory actor (``actor.py``) owns one ``TenantMemory`` per tenant and calls
it. Layout, from the bottom up:

``types``         Memory, Link, RecallFilter, RecallHit and the log records (msgspec)
``text``          the tokenizer shared by the lexical view and the embedder
``embedder``      the ``Embedder`` protocol and the built-in ``HashingEmbedder`` (256 dims)
``vector_index``  exact cosine top-k over a growable float32 matrix
``bm25``          incremental Okapi BM25 with numpy postings
``hybrid``        ``HybridIndex``: every memory scored on each view, combined with weights
``graph``         the link graph
``views``         the graph (personalized PageRank), recency and salience views
``log``           ``MemoryLog``: append-only, CRC-framed, group commit, compaction (here, not
                  in ``stores/``: only this package reads its records)
``tenant``        ``TenantMemory``: the state of one tenant, rebuilt from its log at open
``events``        memory events (published by the actor after each acknowledged change),
                  their checksums, and the node's bounded outbox for them
"""

from __future__ import annotations

from .bm25 import BM25Index
from .embedder import DEFAULT_DIM, Embedder, HashingEmbedder
from .errors import (
    InvalidVectorError,
    LogBrokenError,
    LogClosedError,
    LogCorruptError,
    LogError,
    LogLockedError,
    LogStaleError,
    LogUnavailableError,
    MemoryStoreError,
    TenantMismatchError,
    UnknownMemoryError,
)
from .graph import LinkGraph
from .hybrid import DEFAULT_WEIGHTS, HybridIndex, IndexHit, RecallQuery, ScoreView
from .log import FsyncPolicy, LogStatistics, MemoryLog, tenant_log_path
from .tenant import TenantMemory, TenantMemoryStatistics, content_key
from .text import tokenize
from .types import (
    DEFAULT_NAMESPACE,
    ForgetRecord,
    Link,
    LinkRecord,
    LogRecord,
    Memory,
    RecallFilter,
    RecallHit,
    ReinforceRecord,
    Remembered,
    RememberRecord,
    UnlinkRecord,
)
from .vector_index import VectorIndex
from .views import (
    MULTIVIEW_WEIGHTS,
    VIEW_NAMES,
    GraphView,
    RecencyView,
    SalienceView,
    multiview,
)

__all__ = [
    "DEFAULT_DIM",
    "DEFAULT_NAMESPACE",
    "DEFAULT_WEIGHTS",
    "MULTIVIEW_WEIGHTS",
    "VIEW_NAMES",
    "BM25Index",
    "Embedder",
    "ForgetRecord",
    "FsyncPolicy",
    "GraphView",
    "HashingEmbedder",
    "HybridIndex",
    "IndexHit",
    "InvalidVectorError",
    "Link",
    "LinkGraph",
    "LinkRecord",
    "LogBrokenError",
    "LogClosedError",
    "LogCorruptError",
    "LogError",
    "LogLockedError",
    "LogRecord",
    "LogStaleError",
    "LogStatistics",
    "LogUnavailableError",
    "Memory",
    "MemoryLog",
    "MemoryStoreError",
    "RecallFilter",
    "RecallHit",
    "RecallQuery",
    "RecencyView",
    "ReinforceRecord",
    "RememberRecord",
    "Remembered",
    "SalienceView",
    "ScoreView",
    "TenantMemory",
    "TenantMemoryStatistics",
    "TenantMismatchError",
    "UnknownMemoryError",
    "UnlinkRecord",
    "VectorIndex",
    "content_key",
    "multiview",
    "tenant_log_path",
    "tokenize",
]
