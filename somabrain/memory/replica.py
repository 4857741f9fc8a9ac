"""A memory actor's replica in the node's search worker (see ``search_offload``).

``TenantReplica`` decides when a tenant's recalls go to the worker (at least
``memory.offload_min_memories`` memories, a worker running, a replica built and in step),
opens the replica when it is missing or lost, and turns a recall into a ``WriteTicket`` the
worker's answer resolves. Whenever the worker cannot answer, the recall runs locally, with the
same arguments, so a caller sees the same hits either way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from .associations import AssociationStore
from .embedder import HashingEmbedder
from .messages import ContextRecall, Recall, WriteTicket
from .search_offload import OffloadUnavailable, ReplicaFeed, SearchOffload
from .search_protocol import ViewParams
from .tenant import MAX_TOP_K, TenantMemory
from .types import RecallHit

__all__ = ["OFFLOAD_RESOURCE", "TenantReplica", "shared_offload"]

logger = logging.getLogger("somabrain.memory.offload")

OFFLOAD_RESOURCE = "memory.offload"

#: Seconds between two snapshots of one tenant: a replica the worker keeps dropping (or a
#: worker that keeps dying) costs a snapshot at most this often, not one per recall.
REOPEN_PAUSE = 5.0


def shared_offload(system: Any) -> SearchOffload:
    """The node's search worker, started on first use and stopped at shutdown."""
    offload: SearchOffload | None = system.resources.get(OFFLOAD_RESOURCE)
    if offload is None:
        offload = system.resources[OFFLOAD_RESOURCE] = SearchOffload()
        system.start_soon(offload.run, name="search worker")
        system.add_finalizer(offload.close)
        system.resources.setdefault("metrics.sources", {})[OFFLOAD_RESOURCE] = offload.metrics
    return offload


class TenantReplica:
    """The replica of one memory actor's tenant, opened when the tenant is large enough."""

    def __init__(
        self,
        system: Any,
        memory: TenantMemory,
        associations: AssociationStore | None,
        views: ViewParams,
        min_memories: int,
    ) -> None:
        self._system = system
        self.memory = memory
        self.associations = associations
        self.views = views
        self.min_memories = min_memories
        self.feed: ReplicaFeed | None = None
        self._reopen_after = -math.inf

    def _usable_feed(self) -> ReplicaFeed | None:
        feed = self.feed
        if feed is not None and feed.usable:
            return feed
        if feed is not None and not feed.broken:
            return None  # the worker is still building it
        if len(self.memory) < self.min_memories or time.monotonic() < self._reopen_after:
            return None
        offload = shared_offload(self._system)
        if offload.running:
            self._open(offload)
        return None

    @property
    def available(self) -> bool:
        """A search can go to the worker now (opens the replica when it is due)."""
        return self._usable_feed() is not None

    def _open(self, offload: SearchOffload) -> None:
        self._detach()
        self._reopen_after = time.monotonic() + REOPEN_PAUSE
        memory = self.memory
        memories, vectors, links, salience = memory.replica_snapshot()
        embedder = memory.embedder
        try:
            feed = offload.open_replica(
                memory.index.dim,
                self.views,
                memories=memories,
                vectors=vectors,
                links=links,
                salience=salience,
                associations=self.associations.snapshot() if self.associations else (),
                hashing=embedder.settings if isinstance(embedder, HashingEmbedder) else None,
            )
        except OffloadUnavailable:
            return
        # From here on every change is sent after the snapshot, in the order applied.
        memory.index.feed = memory.index.graph.feed = feed  # type: ignore[union-attr]
        if self.associations is not None:
            self.associations.feed = feed
        self.feed = feed
        logger.info(
            "tenant %s: %d memories searched in the search worker", memory.tenant, len(memories)
        )

    def _detach(self) -> None:
        memory = self.memory
        memory.index.feed = None
        if memory.index.graph is not None:
            memory.index.graph.feed = None
        if self.associations is not None:
            self.associations.feed = None
        if self.feed is not None:
            self.feed.close()
            self.feed = None

    def close(self) -> None:
        self._detach()

    def recall(
        self,
        message: Recall | ContextRecall,
        weights: Mapping[str, float],
        vector: npt.NDArray[Any] | None = None,
        then: Callable[[list[RecallHit]], Any] | None = None,
    ) -> WriteTicket | None:
        """The recall as a ticket the worker's answer resolves (with ``then(hits)`` when
        given, else the hits); None when it must run locally now. ``vector``: the query's
        embedding (the worker embeds with the built-in embedder when it is None)."""
        memory = self.memory
        if not 0 <= message.top_k <= MAX_TOP_K:  # the local recall says what is wrong
            return None
        if vector is None and not isinstance(memory.embedder, HashingEmbedder):
            return None  # the worker embeds with the built-in embedder only
        feed = self._usable_feed()
        if feed is None:
            return None
        ticket = WriteTicket()
        form = message.form if isinstance(message, ContextRecall) else None

        def answered(hits: Any, error: BaseException | None) -> None:
            try:
                if error is None:
                    found = memory.recall_hits(hits)
                else:  # the worker could not answer: the same recall, locally
                    found = memory.recall(
                        message.query, message.top_k, message.namespace, message.filters,
                        weights=weights, vector=vector, at=message.at, form=form,
                    )  # fmt: skip
                ticket.set_result(found if then is None else then(found))
            except Exception as exc:
                ticket.set_exception(exc)

        raw = b"" if vector is None else np.asarray(vector, dtype=np.float32).tobytes()
        feed.search(
            answered,
            text=message.query,
            vector=raw,
            top_k=message.top_k,
            namespace=message.namespace,
            filter=message.filters,
            weights=dict(weights),
            now=memory.now(),
            at=message.at,
            form=dict(form or {}),
        )
        return ticket
