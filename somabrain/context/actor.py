"""``PlannerActor``: a member of the planner pool behind the ``planners`` queue group.

The pool (``[tree.children.planners]``, ``kind = "pool"``, ``size`` from config) runs N copies.
Each subscribes its ref to ``soma.ctx.evaluate``, ``soma.ctx.feedback`` and
``soma.ctx.adaptation`` in the queue group ``planners``, so the bus hands each request to one
member (round robin in process; NATS picks at random). A ref outlives its incarnations, so the
subscription is made once per member and kept across restarts: requests that arrive while a
member restarts wait in its mailbox for the next incarnation. A member stopped for good (the
pool shrank) unsubscribes.

Never lost silently: a request being handled when its planner is killed is answered at once
with ``ContextFailure(503, "planner_restarted")`` from the dying incarnation (a shielded reply
on the way out), so the asker can retry on another member (``client.request`` does, for
evaluate and adaptation queries) instead of waiting for its timeout. If even that reply cannot
be sent, the asker's timeout still ends the wait with a 503.

An evaluate asks the tenant's memory actor for the context recall, then builds the bundle, in
the node's search worker while other evaluates are in progress (``offload``,
``context.build_in_worker``), else on the event loop: while it waits for the worker, the member
handles nothing else, which is why the pool has several.

Shared services from ``system.resources``: ``config`` (``SomaConfig``: ``context`` and
``memory`` sections, read at every request, so a config reload applies to the next one),
``data_dir`` (adaptation state in ``<data_dir>/context``), ``tree`` (to reach the tenants'
memory actors). The ``AdaptationStore`` is one per node
(``resources["context.adaptation"]``), shared by the members: its updates are synchronous, so
concurrent feedback for one tenant never loses an update.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ..actors import Actor, ActorStoppedError, Msg
from ..cluster import OwnerUnavailableError, PayloadTooLargeError
from ..cluster.routing import ask_tenant
from ..governance.http import (
    UNSCOPED,
    GovernanceRefusal,
    evaluate_input,
    keep_memories,
    refused_namespaces,
    unscoped_reader,
)
from ..governance.policy import PolicyInput
from ..governance.reads import search_readable
from ..memory.actor import TenantUnavailableError
from ..memory.errors import LogError
from ..memory.messages import ContextRecall, GetMemories
from ..memory.recall import ContextRecallResult
from ..memory.replica import shared_offload
from ..memory.types import RecallFilter
from ..supervision import MaxChildrenError
from ..tenancy import valid_tenant
from .adaptation import AdaptationStore, StateBackend
from .feedback import apply_feedback
from .messages import (
    ADAPTATION_SUBJECT,
    EVALUATE_SUBJECT,
    FEEDBACK_EVENTS_SUBJECT,
    FEEDBACK_SUBJECT,
    PLANNER_QUEUE,
    AdaptationQuery,
    AdaptationView,
    ContextFailure,
    Evaluate,
    Feedback,
    FeedbackResult,
)
from .offload import build as offload_build
from .settings import ContextSettings, query_too_long, tenant_default_weights

__all__ = ["ADAPTATION_RESOURCE", "PlannerActor"]

logger = logging.getLogger("somabrain.context")

ADAPTATION_RESOURCE = "context.adaptation"
_SUBSCRIPTIONS = "context.subscriptions"
_EVALUATING = "context.evaluating"
_STORE_CONFIG = "context.adaptation.config"
_MAX_USED_KEYS = 1000


class _Refused(Exception):
    def __init__(self, failure: ContextFailure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _refuse(status: int, code: str, message: str, field: str | None = None) -> _Refused:
    retry = 1.0 if status == 503 else None
    return _Refused(
        ContextFailure(status=status, code=code, message=message, field=field, retry_after=retry)
    )


def context_settings(system: Any) -> ContextSettings:
    config = system.resources.get("config")
    settings = getattr(config, "context", None)
    return settings if isinstance(settings, ContextSettings) else ContextSettings()


def adaptation_store(system: Any) -> AdaptationStore:
    """The node's shared store (created on first use), following the node's config: after a
    reload (``/admin/reload`` replaces ``resources["config"]``) its settings and the defaults
    of tenants without a state yet (and of a reset) are the new config's; learned weights
    stay."""
    resources = system.resources
    config = resources.get("config")
    store: AdaptationStore | None = resources.get(ADAPTATION_RESOURCE)
    if store is None:
        data_dir = resources.get("data_dir")
        directory = Path(data_dir) / "context" if data_dir is not None else None
        settings = context_settings(system).adaptation
        store = AdaptationStore(
            directory, tenant_default_weights(config), settings, _state_backend(resources)
        )
        resources[ADAPTATION_RESOURCE] = store
    elif resources[_STORE_CONFIG] is not config:
        store.settings = context_settings(system).adaptation
        store.defaults = tenant_default_weights(config)
    resources[_STORE_CONFIG] = config
    return store


def _state_backend(resources: dict[str, Any]) -> StateBackend | None:
    """With the memories in PostgreSQL, the learned weights go there too (a row a tenant),
    so that a cluster member standing in for another finds them."""
    memory = getattr(resources.get("config"), "memory", None)
    url = getattr(memory, "postgres_url", "")
    if memory is None or not url:
        return None
    from ..memory.pg_log import PostgresStates

    return PostgresStates(
        resources,
        url,
        "adaptation",
        max_connections=memory.postgres_max_connections,
        timeout=memory.postgres_timeout,
    )


class PlannerActor(Actor):
    """Builds bundles, applies feedback, shows and resets adaptation state (module doc)."""

    @property
    def settings(self) -> ContextSettings:
        """The node's current ``[context]`` settings: a config reload applies from the next
        request on."""
        return context_settings(self.context.system)

    @property
    def store(self) -> AdaptationStore:
        return adaptation_store(self.context.system)

    async def on_start(self) -> None:
        system = self.context.system
        #: Evaluates in progress on this node, across the pool (``build_in_worker = "busy"``).
        self._evaluating: list[int] = system.resources.setdefault(_EVALUATING, [0])
        subscribed: dict[str, Any] = system.resources.setdefault(_SUBSCRIPTIONS, {})
        if self.context.path not in subscribed:
            ref = self.context.ref
            subscribed[self.context.path] = [
                await system.bus.subscribe_actor(subject, ref, queue=PLANNER_QUEUE)
                for subject in (EVALUATE_SUBJECT, FEEDBACK_SUBJECT, ADAPTATION_SUBJECT)
            ]

    async def on_stop(self) -> None:
        subscribed = self.context.system.resources.get(_SUBSCRIPTIONS, {})
        for sub in subscribed.pop(self.context.path, []):
            await sub.unsubscribe()

    async def receive(self, message: Any) -> Any:
        if not isinstance(message, Msg):
            return await self.handle(message)
        reply: Any
        try:
            reply = await self.handle(message.data)
        except BaseException:
            if message.reply:  # killed (or a bug): tell the asker now rather than at its timeout
                with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                    await message.respond(
                        ContextFailure(
                            status=503,
                            code="planner_restarted",
                            message=f"{self.context.path} stopped while handling the request",
                            retry_after=0.0,
                        )
                    )
            raise
        if message.reply:
            await message.respond(reply)
        return None

    async def handle(self, request: Any) -> Any:
        """The reply to one request (a ``ContextFailure`` for refusals)."""
        try:
            match request:
                case Evaluate():
                    return await self.evaluate(request)
                case Feedback():
                    return await self.feedback(request)
                case AdaptationQuery():
                    return await self.adaptation(request)
            raise _refuse(400, "bad_request", f"unknown request {type(request).__name__}")
        except _Refused as exc:
            return exc.failure

    # ------------------------------------------------------------------ memory

    async def _memory(self, tenant: str, message: Any) -> Any:
        if not valid_tenant(tenant):
            raise _refuse(400, "invalid_tenant", f"invalid tenant id {tenant!r}")
        try:
            # In a cluster the edge sends a tenant's evaluate and feedback to its owner's
            # planners, so this is local but for a request sent on this node's bus directly.
            return await ask_tenant(
                self.context.system, tenant, message, self.settings.recall_timeout
            )
        except PayloadTooLargeError as exc:
            raise _refuse(413, "payload_too_large", str(exc)) from None
        except OwnerUnavailableError as exc:
            raise _refuse(503, "unavailable", str(exc)) from None
        except ActorStoppedError as exc:
            raise _refuse(503, "unavailable", f"memory actor unavailable: {exc}") from None
        except TimeoutError as exc:
            raise _refuse(503, "timeout", f"memory actor did not answer: {exc}") from None
        except MaxChildrenError as exc:
            raise _refuse(503, "overloaded", str(exc)) from None
        except (LogError, TenantUnavailableError) as exc:
            # The tenant's log cannot be read or written (a database down, a broken file): a
            # refusal like the edge's for /memory/*, not a crash of the planner.
            raise _refuse(503, "storage_unavailable", str(exc)) from None
        except msgspec.ValidationError as exc:
            raise _refuse(422, "invalid_field", str(exc), "filters") from None
        except ValueError as exc:
            raise _refuse(422, "invalid_field", str(exc)) from None

    # ------------------------------------------------------------------ evaluate

    async def evaluate(self, request: Evaluate) -> Any:
        self._evaluating[0] += 1
        try:
            return await self._evaluate(request)
        finally:
            self._evaluating[0] -= 1

    async def _evaluate(self, request: Evaluate) -> Any:
        started = time.perf_counter()
        settings = self.settings  # one request, one config (a reload may come meanwhile)
        limits = settings.limits
        top_k = limits.default_top_k if request.top_k is None else request.top_k
        if not 1 <= top_k <= limits.max_memories:
            raise _refuse(  # the code of every other range error (``errors.from_validation``)
                422, "out_of_range", f"top_k must be between 1 and {limits.max_memories}", "top_k"
            )
        if not request.query.strip():
            raise _refuse(422, "invalid_field", "query must not be blank", "query")
        if len(request.query) > limits.max_query_chars:
            raise _refuse(422, "out_of_range", query_too_long(limits.max_query_chars), "query")
        filters = None
        if request.filters:
            try:
                filters = RecallFilter.from_mapping(request.filters)
            except msgspec.ValidationError as exc:
                raise _refuse(422, "invalid_field", str(exc), "filters") from None
        await self.store.ensure(request.tenant)
        weights = self.store.weights(request.tenant)
        reader = self._reader(request)

        async def search(filters: RecallFilter | None) -> ContextRecallResult:
            found: ContextRecallResult = await self._memory(
                request.tenant,
                ContextRecall(
                    query=request.query,
                    top_k=top_k,
                    namespace=request.namespace,
                    filters=filters,
                    weights=weights,
                    at=request.at,
                    session_id=request.session_id,
                    wm_top_k=settings.working_memory.top_k,
                    form=self.store.form(request.tenant),
                ),
            )
            return found

        # Memories of namespaces closed to the caller (e.g. reserved) are searched around;
        # what is still in one after the last search is left out below (``_governed``).
        recall, refused = await search_readable(
            search,
            filters,
            lambda found: (hit.memory.namespace for hit in found.hits),
            lambda namespaces: self._refused(reader, namespaces),
        )
        recall = self._governed(reader, recall, refused)
        where = settings.build_in_worker
        # Asked for even when this bundle stays here: the first evaluate starts the worker, so
        # it is running when the load comes.
        offload = None if where == "never" else shared_offload(self.context.system)
        if where == "busy" and self._evaluating[0] < 2:
            offload = None  # the only evaluate in progress: the loop is free
        bundle = await offload_build(
            offload,
            request.query,
            recall,
            weights,
            settings,
            session_id=request.session_id,
            trace_id=request.trace_id,
            planner_name=self.context.name,
        )
        elapsed = (time.perf_counter() - started) * 1e3
        return msgspec.structs.replace(bundle, duration_ms=round(elapsed, 3))

    def _reader(self, request: Evaluate | Feedback) -> PolicyInput:
        """The request as the edge's gate decided it (an unscoped one as ``unscoped_reader``
        says), so that the policies' verdict on a memory's tags is taken as the gate's."""
        return unscoped_reader(
            self.context.system.resources,
            evaluate_input(
                request.tenant,
                namespace=request.namespace or UNSCOPED,
                query=request.query,
                scopes=request.scopes,
            ),
        )

    def _refused(self, reader: PolicyInput, namespaces: Iterable[str]) -> frozenset[str]:
        try:
            return refused_namespaces(self.context.system.resources, reader, namespaces)
        except GovernanceRefusal as refusal:
            raise _refuse(refusal.status, refusal.code, refusal.message) from None

    def _governed(
        self, reader: PolicyInput, recall: ContextRecallResult, refused: frozenset[str]
    ) -> ContextRecallResult:
        """Leave out memories whose tags the constitution's policies refuse (e.g. blocked
        since they were remembered), or whose namespace is closed to the caller (``refused``,
        from the search), before they reach the prompt; and working-memory items of closed
        namespaces."""
        keep = keep_memories(
            self.context.system.resources, reader, [hit.memory.tags for hit in recall.hits]
        )
        if refused:
            namespaces = [hit.memory.namespace for hit in recall.hits]
            keep = [k and ns not in refused for k, ns in zip(keep, namespaces, strict=True)]
        wm_refused = self._refused(
            reader, (m.namespace for m in recall.wm_memories if m is not None)
        )
        # Items whose memory is unknown (``wm_memories`` not fetched) are left out: closed.
        known = len(recall.wm_memories) == len(recall.working_memory)
        if all(keep) and not wm_refused and known:
            return recall
        kept = [i for i, ok in enumerate(keep) if ok]
        wm_kept = [
            i
            for i, m in enumerate(recall.wm_memories)
            if known and (m is None or m.namespace not in wm_refused)
        ]
        return dataclasses.replace(
            recall,
            hits=[recall.hits[i] for i in kept],
            vectors=recall.vectors[kept],
            working_memory=[recall.working_memory[i] for i in wm_kept],
            wm_vectors=recall.wm_vectors[wm_kept],
            wm_memories=[recall.wm_memories[i] for i in wm_kept],
        )

    # ------------------------------------------------------------------ feedback

    async def feedback(self, request: Feedback) -> Any:
        if len(request.used_keys) > _MAX_USED_KEYS:
            raise _refuse(422, "out_of_range", f"more than {_MAX_USED_KEYS} used_keys", "used_keys")
        for name in ("utility", "reward", "latency_ms"):
            value = getattr(request, name)
            if value is not None and value != value:  # NaN
                raise _refuse(422, "invalid_field", f"{name} must be a number", name)
        tenant = request.tenant
        settings = self.settings
        usable, hidden = await self._usable_keys(request)
        await self.store.ensure(tenant)
        update, reinforced = await apply_feedback(
            self.store,
            tenant,
            lambda message: self._memory(tenant, message),
            query=request.query,
            used_keys=usable,
            utility=request.utility,
            reward=request.reward,
            default_top_k=settings.limits.default_top_k,
            reinforce=settings.adaptation.reinforce,
            namespace=request.namespace,
            at=request.at,
            session_id=request.session_id,
        )
        # Unknown: not held (or closed to the caller) when looked up, or forgotten since.
        gone = {key for key in usable if reinforced and key not in reinforced}
        unknown = [key for key in dict.fromkeys(request.used_keys) if key in hidden or key in gone]
        await self._save(tenant)
        await self._publish_event(request)
        return FeedbackResult(
            accepted=True,
            adaptation_applied=update.applied,
            weights_before=update.weights_before,
            weights_after=update.weights_after,
            reinforced=len(reinforced),
            learning_rate=update.learning_rate,
            unknown_keys=unknown,
        )

    async def _save(self, tenant: str) -> None:
        try:
            await self.store.save(tenant)
        except LogError as exc:  # the database that keeps the state is down
            raise _refuse(503, "storage_unavailable", str(exc)) from None

    async def _usable_keys(self, request: Feedback) -> tuple[list[str], set[str]]:
        """The used keys feedback may change, and the others: those the tenant does not hold,
        and those in a namespace closed to the caller (reserved ones without the ``admin``
        scope), reported alike as unknown, so that a feedback tells nothing of what such a
        namespace holds."""
        keys = list(dict.fromkeys(request.used_keys))
        if not keys:
            return keys, set()
        found = await self._memory(request.tenant, GetMemories(tuple(keys)))
        namespaces = {m.namespace for m in found if m is not None}
        refused = self._refused(self._reader(request), namespaces) if namespaces else frozenset()
        hidden = {
            key
            for key, memory in zip(keys, found, strict=True)
            if memory is None or memory.namespace in refused
        }
        return [key for key in keys if key not in hidden], hidden

    async def _publish_event(self, request: Feedback) -> None:
        """The feedback on ``soma.feedback`` (reward worker, Kafka bridge); best effort: the
        feedback is already applied and durable."""
        event: dict[str, Any] = {
            "tenant": request.tenant,
            "session_id": request.session_id,
            "time": time.time(),
        }
        for name in ("reward", "utility"):
            if getattr(request, name) is not None:
                event[name] = getattr(request, name)
        if request.metadata and isinstance(request.metadata.get("audit_id"), str):
            event["audit_id"] = request.metadata["audit_id"]
        if request.tokens is not None:
            tokens = {
                k: v for k, v in msgspec.structs.asdict(request.tokens).items() if v is not None
            }
            event["tokens"] = tokens
        try:
            with anyio.fail_after(1.0):
                await self.context.system.bus.publish(FEEDBACK_EVENTS_SUBJECT, event)
        except Exception as exc:  # a full or closed bus must not fail an applied feedback
            logger.warning("feedback event not published: %r", exc)

    # ------------------------------------------------------------------ adaptation

    async def adaptation(self, request: AdaptationQuery) -> AdaptationView:
        if not valid_tenant(request.tenant):
            raise _refuse(400, "invalid_tenant", f"invalid tenant id {request.tenant!r}")
        await self.store.ensure(request.tenant)
        if request.reset:
            self.store.reset(request.tenant)
            await self._save(request.tenant)
        state = self.store.get(request.tenant)
        return AdaptationView(
            tenant=state.tenant,
            weights=dict(state.weights),
            defaults=dict(self.store.defaults),
            history_length=len(state.history),
            feedback=state.feedback,
            updates=state.updates,
            updated_at=state.updated_at,
            history=[msgspec.structs.asdict(h) for h in state.history[-10:]],
            form=dict(state.form),
        )
