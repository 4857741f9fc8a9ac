"""The ``[workers]`` config section (merged into ``somabrain.config.SomaConfig``)."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

__all__ = ["IntegritySettings", "RewardSettings", "TelemetrySettings", "WorkersSettings"]

PositiveFloat = Annotated[float, Meta(gt=0)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class IntegritySettings(_Section):
    #: Where memory events arrive: the memory actors' subjects (``soma.memory.events.<tenant>``)
    #: on a node, or the subject a bridge consume route feeds from Kafka.
    subject: str = "soma.memory.events.>"
    #: Queue group, so that one worker of a cluster checks each event.
    queue: str = "soma-integrity"
    #: Repair what disagrees: a replica from the source of truth, the embedded store from its
    #: log (by restarting the tenant's memory actor). Else only report.
    repair: bool = True
    #: Seconds before a disagreement is looked at again (a later event may explain it).
    recheck_delay: PositiveFloat = 1.0
    #: At most one rebuild of a tenant's embedded store per this many seconds.
    rebuild_interval: PositiveFloat = 60.0
    #: Seconds a check waits for a tenant's memory actor.
    check_timeout: PositiveFloat = 10.0
    #: The dynamic supervisor of the memory actors (the embedded store).
    memory_path: str = "/root/memory"


class RewardSettings(_Section):
    feedback_subject: str = "soma.feedback"
    #: The audit writer's ``publish_subject``: the worker subscribes to its
    #: ``.context.evaluate`` events (the bundles feedback is correlated with).
    audit_subject: str = "soma.audit"
    #: Ledger directory; empty: ``<data-dir>/ledger``.
    directory: str = ""
    #: Seconds an evaluate decision stays available for correlation.
    correlation_window: PositiveFloat = 24 * 3600.0


class TelemetrySettings(_Section):
    #: Publish a snapshot of the node every ``interval`` seconds (else only on ``ask``).
    enabled: bool = True
    subject: str = "soma.telemetry"
    interval: PositiveFloat = 10.0


class WorkersSettings(_Section):
    integrity: IntegritySettings = msgspec.field(default_factory=IntegritySettings)
    reward: RewardSettings = msgspec.field(default_factory=RewardSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
