"""Every memory and context reply, and every error the edge maps to a status, survives the
trip between members: same Python value, same exception type, message and attributes."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest

from somabrain.actors import ActorKilledError, ActorStoppedError, AskTimeoutError, MailboxFullError
from somabrain.cluster.errors import OwnerUnavailableError, PayloadTooLargeError, RemoteError
from somabrain.cluster.wire import (
    ContextCall,
    MemoryCall,
    Raised,
    Returned,
    decode_error,
    decode_reply,
    encode_error,
    encode_reply,
    wire_codec,
)
from somabrain.context.messages import (
    AdaptationQuery,
    AdaptationView,
    BundleMemory,
    ContextBundle,
    ContextFailure,
    Evaluate,
    Feedback,
    FeedbackResult,
)
from somabrain.edge.handlers import memory_error
from somabrain.memory.actor import TenantUnavailableError
from somabrain.memory.errors import (
    InvalidVectorError,
    LogBrokenError,
    LogClosedError,
    LogCorruptError,
    LogLockedError,
    TenantMismatchError,
    UnknownMemoryError,
)
from somabrain.memory.log import LogStatistics
from somabrain.memory.messages import (
    ContextRecall,
    Forget,
    GetMemories,
    GetMemory,
    LinkMemories,
    MemoryStats,
    Recall,
    Reinforce,
    Remember,
    Unlink,
)
from somabrain.memory.recall import ContextRecallResult
from somabrain.memory.tenant import TenantMemoryStatistics
from somabrain.memory.types import Link, Memory, RecallFilter, RecallHit, Remembered
from somabrain.memory.working import WMHit
from somabrain.supervision import MaxChildrenError

CODEC = wire_codec()
MEMORY = Memory(
    content="Paris is the capital of France",
    key="k1",
    tenant="acme",
    meta={"kind": "fact", "n": 1},
    tags=("geo",),
    links=(Link(to_key="k2", weight=0.5),),
    vector=[0.25, -1.0],
)
HIT = RecallHit(key="k1", score=0.75, views={"semantic": 0.5, "lexical": 1.0}, memory=MEMORY)


def _cross(request: Any, value: Any) -> Any:
    payload = CODEC.encode(encode_reply(request, value))
    returned = CODEC.decode(payload)
    assert isinstance(returned, Returned)
    return decode_reply(request, returned)


REPLIES = [
    (Remember((MEMORY,)), [Remembered("k1", False), Remembered("k9", True)]),
    (Recall(query="capital"), [HIT]),
    (GetMemory("k1"), MEMORY),
    (GetMemory("nope"), None),
    (GetMemories(("k1", "nope")), [MEMORY, None]),
    (Forget("k1"), True),
    (LinkMemories(from_key="k1", to_key="k2"), Link(from_key="k1", to_key="k2", weight=2.0)),
    (Unlink(from_key="k1", to_key="k2"), False),
    (Reinforce(keys=("k1",), amount=1.0), {"k1": 2.5}),
    (
        MemoryStats(),
        TenantMemoryStatistics(
            tenant="acme",
            memories=1,
            links=1,
            namespaces=1,
            index_slots=8,
            index_dead_slots=0,
            log_records=2,
            log_dead_records=0,
            compactions=0,
            log=LogStatistics(
                path="/x",
                policy="group",
                records=2,
                size_bytes=100,
                appends=2,
                writes=1,
                fsyncs=1,
                truncated_bytes=0,
                compactions=0,
            ),
        ),
    ),
    (
        Evaluate(tenant="acme", query="capital"),
        ContextBundle(
            query="capital",
            prompt="p",
            memories=[
                BundleMemory(key="k1", content="c", score=0.5, weight=1.0, views={"semantic": 0.5})
            ],
            weights={"semantic": 1.0},
            residual_vector=[0.5, 0.25],
            working_memory=[],
            plan=None,
        ),
    ),
    (
        Feedback(tenant="acme", session_id="s", query="q"),
        FeedbackResult(
            accepted=True, adaptation_applied=True, weights_before={}, weights_after={"a": 1.0}
        ),
    ),
    (
        AdaptationQuery(tenant="acme"),
        AdaptationView(
            tenant="acme",
            weights={"semantic": 1.0},
            defaults={"semantic": 1.0},
            history_length=0,
            feedback=0,
            updates=0,
            updated_at=0.0,
        ),
    ),
    (Evaluate(tenant="acme", query="q"), ContextFailure(status=422, code="x", message="m")),
    (
        Feedback(tenant="acme", session_id="s", query="q"),
        ContextFailure(status=503, code="t", message="m", retry_after=1.0),
    ),
]


@pytest.mark.parametrize(("request_", "value"), REPLIES, ids=lambda v: type(v).__name__)
def test_replies_cross_as_the_same_value(request_: Any, value: Any) -> None:
    crossed = _cross(request_, value)
    assert crossed == value
    assert type(crossed) is type(value)
    if isinstance(value, list) and value and isinstance(value[0], Remembered):
        assert all(type(item) is Remembered for item in crossed)


def test_a_context_recall_keeps_its_float32_arrays() -> None:
    rng = np.random.default_rng(7)
    result = ContextRecallResult(
        hits=[HIT],
        vectors=rng.standard_normal((1, 4)).astype(np.float32),
        working_memory=[WMHit(key="k1", content="c", score=0.5, views={"wm": 0.5}, at=1.0)],
        wm_vectors=rng.standard_normal((1, 4)).astype(np.float32),
        query_vector=rng.standard_normal(4).astype(np.float32),
        dim=4,
        wm_memories=[MEMORY],
    )
    crossed = _cross(ContextRecall(query="q", filters=RecallFilter(tags=("geo",))), result)
    assert isinstance(crossed, ContextRecallResult)
    assert (crossed.hits, crossed.working_memory, crossed.dim, crossed.wm_memories) == (
        result.hits,
        result.working_memory,
        result.dim,
        result.wm_memories,
    )
    for name in ("vectors", "wm_vectors", "query_vector"):
        array = getattr(crossed, name)
        assert array.dtype == np.float32
        assert array.flags.writeable
        np.testing.assert_array_equal(array, getattr(result, name))
    empty = ContextRecallResult(
        hits=[],
        vectors=np.zeros((0, 4), np.float32),
        working_memory=[],
        wm_vectors=np.zeros((0, 4), np.float32),
        query_vector=np.zeros(4, np.float32),
        dim=4,
    )
    assert _cross(ContextRecall(query="q"), empty).vectors.shape == (0, 4)


def test_requests_cross_with_their_message() -> None:
    call = MemoryCall(tenant="acme", request=Remember((MEMORY,)), timeout=2.0)
    assert CODEC.decode(CODEC.encode(call)) == call
    context = ContextCall(request=Feedback(tenant="acme", session_id="s", query="q"), timeout=1.0)
    assert CODEC.decode(CODEC.encode(context)) == context


def _validation_error() -> msgspec.ValidationError:
    try:
        msgspec.convert({"tags": 1}, RecallFilter)
    except msgspec.ValidationError as exc:
        return exc
    raise AssertionError("unreachable")


ERRORS: list[Exception] = [
    UnknownMemoryError("acme", "k404"),
    InvalidVectorError(384, "got 3 values"),
    TenantMismatchError("acme", "other"),
    TenantUnavailableError("acme", OSError("disk gone")),
    LogCorruptError("/log", 12, "bad record"),
    LogLockedError("/log"),
    LogClosedError("/log"),
    LogBrokenError("/log", OSError("fsync")),
    ActorStoppedError("/root/memory/acme"),
    ActorKilledError("/root/memory/acme"),
    AskTimeoutError("/root/memory/acme", 2.0),
    MailboxFullError("/root/memory/acme", 16),
    OwnerUnavailableError("b", "no responders"),
    PayloadTooLargeError("reply", 2_000_000, 1_048_576),
    _validation_error(),
    TimeoutError("write not acknowledged within 1 s"),
    ValueError("content must not be blank"),
    MaxChildrenError("/root/memory has reached max_children=2"),
    RuntimeError("a bug on the owner"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_errors_cross_as_the_same_type_message_and_http_answer(error: Exception) -> None:
    raised = CODEC.decode(CODEC.encode(encode_error(error)))
    assert isinstance(raised, Raised)
    crossed = decode_error(raised)
    assert type(crossed) is type(error)
    assert str(crossed) == str(error)
    for name, value in vars(error).items():
        if isinstance(value, str | int | float):
            assert getattr(crossed, name) == value
    here, there = memory_error(error, {"k404": "to_key"}), memory_error(crossed, {"k404": "to_key"})
    if here is None:
        assert there is None
    else:
        assert there is not None
        assert (there.status, there.code, there.field, str(there)) == (
            here.status,
            here.code,
            here.field,
            str(here),
        )


def test_unknown_errors_cross_as_their_nearest_listed_base_or_remote_error() -> None:
    class Odd(ValueError):
        pass

    assert type(decode_error(encode_error(Odd("odd")))) is ValueError
    remote = decode_error(encode_error(ZeroDivisionError("division by zero")))
    assert isinstance(remote, RemoteError)
    assert remote.error == "ZeroDivisionError"
    assert memory_error(remote) is None  # a bug there is a 500 here too
