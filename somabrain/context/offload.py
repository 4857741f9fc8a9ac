"""Context bundles built in the node's search worker process, off the event loop.

Why: with recall already searched in the worker (``memory.search_offload``), building the
bundle was the largest single cost left on the node's event loop: planning the prompt and
superposing the residual vector took ~40% of the main thread under evaluate load (10k
memories, 16 connections). It is a pure function of the recall, the weights and the settings,
so a planner hands it to the worker (``SearchOffload.call``) and awaits the bundle while the
loop serves other requests: the loop only encodes the job and decodes the bundle. When the loop
has nothing else to do, the round trip costs more than it saves, so by default the planner
asks for it only while other evaluates are in progress (``context.build_in_worker``).

Same bundle: the worker runs ``build_bundle`` on the same inputs (vectors travel as raw
float32, the memories with every field ``build_bundle`` reads), so the bundle equals the one
built in the node (tested). The settings are encoded once per settings object, and decoded
once per change in the worker.

Never worse than local: when no worker runs, it is stalled, dies or fails, the planner builds
the bundle itself (``build``), so an evaluate never depends on the worker's health.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import anyio
import msgspec
import numpy as np

from ..memory.recall import ContextRecallResult
from ..memory.search_offload import SearchOffload
from ..memory.types import Memory, RecallHit
from ..memory.working import WMHit
from .builder import build_bundle
from .messages import ContextBundle
from .settings import ContextSettings

__all__ = ["FUNCTION", "build", "build_packed", "pack_job"]

#: The worker's name for ``build_packed`` (``search_worker.FUNCTIONS``).
FUNCTION = "context.bundle"


class _Job(msgspec.Struct, frozen=True, array_like=True):
    query: str
    hits: list[RecallHit]
    vectors: bytes
    working_memory: list[WMHit]
    wm_vectors: bytes
    dim: int
    weights: dict[str, float]
    settings: msgspec.Raw  # a ContextSettings (``_encoded``)
    session_id: str | None
    trace_id: str | None
    planner_name: str


_encoder = msgspec.msgpack.Encoder()
_jobs = msgspec.msgpack.Decoder(_Job)
_bundles = msgspec.msgpack.Decoder(ContextBundle)
#: The last settings encoded (node) and decoded (worker): they change only on a reload.
_encoded: list[tuple[ContextSettings, msgspec.Raw]] = []
_decoded: list[tuple[msgspec.Raw, ContextSettings]] = []


def _settings_raw(settings: ContextSettings) -> msgspec.Raw:
    if not _encoded or _encoded[0][0] is not settings:
        _encoded[:] = [(settings, msgspec.Raw(_encoder.encode(settings)))]
    return _encoded[0][1]


def _settings(raw: msgspec.Raw) -> ContextSettings:
    if not _decoded or _decoded[0][0] != raw:  # (Raw compares the bytes)
        settings = msgspec.msgpack.decode(raw, type=ContextSettings)
        _decoded[:] = [(raw.copy(), settings)]  # a copy: not a view of the whole job
    return _decoded[0][1]


def _slim(hit: RecallHit) -> RecallHit:
    """The hit with only the memory fields a bundle shows (not its value, meta, vector)."""
    m = hit.memory
    memory = Memory(
        content=m.content, key=m.key, tags=m.tags, occurred_at=m.occurred_at,
        session_id=m.session_id,
    )  # fmt: skip
    return RecallHit(key=hit.key, score=hit.score, views=hit.views, memory=memory)


def pack_job(
    query: str,
    recall: ContextRecallResult,
    weights: Mapping[str, float],
    settings: ContextSettings,
    *,
    session_id: str | None = None,
    trace_id: str | None = None,
    planner_name: str = "",
) -> bytes:
    """``build_bundle``'s arguments, encoded for ``build_packed``."""
    job = _Job(
        query=query,
        hits=[_slim(h) for h in recall.hits],
        vectors=np.ascontiguousarray(recall.vectors, dtype=np.float32).tobytes(),
        working_memory=recall.working_memory,
        wm_vectors=np.ascontiguousarray(recall.wm_vectors, dtype=np.float32).tobytes(),
        dim=recall.dim,
        weights=dict(weights),
        settings=_settings_raw(settings),
        session_id=session_id,
        trace_id=trace_id,
        planner_name=planner_name,
    )
    return _encoder.encode(job)


def build_packed(payload: bytes) -> bytes:
    """The worker's side: the encoded bundle of an encoded job (``pack_job``)."""
    job = _jobs.decode(payload)
    dim = job.dim
    vectors = np.frombuffer(job.vectors, dtype=np.float32).reshape(len(job.hits), dim)
    wm_vectors = np.frombuffer(job.wm_vectors, dtype=np.float32).reshape(-1, dim)
    recall = ContextRecallResult(
        hits=job.hits,
        vectors=vectors,
        working_memory=job.working_memory,
        wm_vectors=wm_vectors,
        query_vector=np.zeros(dim, dtype=np.float32),  # not read by ``build_bundle``
        dim=dim,
    )
    bundle = build_bundle(
        job.query,
        recall,
        job.weights,
        _settings(job.settings),
        session_id=job.session_id,
        trace_id=job.trace_id,
        planner_name=job.planner_name,
    )
    return _encoder.encode(bundle)


async def build(
    offload: SearchOffload | None,
    query: str,
    recall: ContextRecallResult,
    weights: Mapping[str, float],
    settings: ContextSettings,
    *,
    session_id: str | None = None,
    trace_id: str | None = None,
    planner_name: str = "",
) -> ContextBundle:
    """``build_bundle(...)``, in the worker when ``offload`` can take it, else here."""
    args: dict[str, Any] = dict(session_id=session_id, trace_id=trace_id, planner_name=planner_name)
    if offload is None or not offload.running or offload.stalled:
        return build_bundle(query, recall, weights, settings, **args)
    done = anyio.Event()
    answer: list[Any] = []

    def returned(payload: Any, error: BaseException | None) -> None:
        answer.append(error if error is not None else payload)
        done.set()

    offload.call(FUNCTION, pack_job(query, recall, weights, settings, **args), returned)
    await done.wait()
    if isinstance(answer[0], BaseException):  # ``OffloadUnavailable``
        return build_bundle(query, recall, weights, settings, **args)
    return _bundles.decode(answer[0])
