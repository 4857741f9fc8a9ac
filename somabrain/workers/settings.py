"""The ``[workers]`` config section (merged into ``somabrain.config.SomaConfig``)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["IntegritySettings", "RewardSettings", "WorkersSettings"]

PositiveFloat = Annotated[float, Meta(gt=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class IntegritySettings(_Section):
    #: Where memory events arrive: the bus subject itself on a single node, or the subject a
    #: bridge consume route feeds from Kafka in a cluster.
    subject: str = "soma.memory.events"
    #: Queue group, so that one worker of a cluster checks each event.
    queue: str = "soma-integrity"
    #: Rewrite a disagreeing replica from the source of truth (else only report).
    repair: bool = True


class RewardSettings(_Section):
    feedback_subject: str = "soma.feedback"
    #: The audit writer's ``publish_subject``: the worker subscribes to its
    #: ``.context.evaluate`` events (the bundles feedback is correlated with).
    audit_subject: str = "soma.audit"
    #: Ledger directory; empty: ``<data-dir>/ledger``.
    directory: str = ""
    #: Seconds an evaluate decision stays available for correlation.
    correlation_window: PositiveFloat = 24 * 3600.0


class WorkersSettings(_Section):
    integrity: IntegritySettings = msgspec.field(default_factory=IntegritySettings)
    reward: RewardSettings = msgspec.field(default_factory=RewardSettings)
