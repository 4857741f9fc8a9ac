"""The reward worker: feedback correlated with the audit trail, and the token ledger.

It listens to two subjects: durable ``context.evaluate`` audit events (the writer publishes
each event on ``soma.audit.<action>`` once it is durable) and feedback (``soma.feedback``,
what the edge receives on ``POST /context/feedback``). A feedback message refers to the
bundle it rates by the bundle's ``audit_id`` when the agent passes it back, else by
``(tenant, session_id)``: the worker keeps the recent ``context.evaluate`` decisions per
session for ``correlation_window`` seconds.

The ledger adds up, per tenant, model and UTC day: feedback count, correlated count, reward
sum, prompt and completion tokens. Every feedback is appended (one JSON line, flushed) to
``<data-dir>/ledger/ledger.jsonl`` before it is counted, and the totals are rebuilt from that
file on start, so a restart or a kill -9 loses nothing that was counted.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ..actors import Actor, Msg
from ..audit import AuditEvent
from .settings import RewardSettings

__all__ = ["Feedback", "GetLedger", "LedgerEntry", "LedgerRow", "RewardWorker", "TokenUsage"]


class TokenUsage(msgspec.Struct, frozen=True):
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Feedback(msgspec.Struct, frozen=True, kw_only=True):
    tenant: str
    session_id: str = ""
    audit_id: str = ""
    reward: float | None = None
    utility: float | None = None
    tokens: TokenUsage | None = None
    time: float = 0.0


class LedgerEntry(msgspec.Struct, frozen=True):
    """One line of the ledger file."""

    tenant: str
    model: str
    day: str
    reward: float
    prompt_tokens: int
    completion_tokens: int
    correlated: bool
    bundle_audit_id: str


class LedgerRow(msgspec.Struct):
    tenant: str
    model: str
    day: str
    feedback: int = 0
    correlated: int = 0
    reward: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class GetLedger(msgspec.Struct, frozen=True):
    tenant: str = ""


_entry_decoder = msgspec.json.Decoder(LedgerEntry)
_MAX_SESSIONS = 100_000


class RewardWorker(Actor):
    async def on_start(self) -> None:
        system = self.context.system
        workers = getattr(system.resources.get("config"), "workers", None)
        self.settings: RewardSettings = workers.reward if workers is not None else RewardSettings()
        base = self.settings.directory or Path(system.resources.get("data_dir", ".")) / "ledger"
        self.path = anyio.Path(base) / "ledger.jsonl"
        await self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows: dict[tuple[str, str, str], LedgerRow] = {}
        if await self.path.exists():
            for line in (await self.path.read_bytes()).splitlines():
                try:
                    self._count(_entry_decoder.decode(line))
                except msgspec.DecodeError:
                    break  # a torn last line: it was never counted
        self.sessions: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self.bundles: OrderedDict[str, tuple[float, str]] = OrderedDict()
        key = f"reward:{self.context.path}"
        if key not in system.resources:  # subscribe once: the ref outlives incarnations
            ref = self.context.ref
            system.resources[key] = (
                await system.bus.subscribe_actor(
                    f"{self.settings.audit_subject}.context.evaluate", ref
                ),
                await system.bus.subscribe_actor(self.settings.feedback_subject, ref),
            )

    async def receive(self, message: Any) -> Any:
        if isinstance(message, GetLedger):
            return [
                r for r in self.rows.values() if not message.tenant or r.tenant == message.tenant
            ]
        if isinstance(message, Msg):
            message = message.data
        if isinstance(message, AuditEvent):
            self._remember(message)
        elif isinstance(message, Feedback | dict):
            feedback = msgspec.convert(message, Feedback) if isinstance(message, dict) else message
            await self._feedback(feedback)
        return None

    def _remember(self, event: AuditEvent) -> None:
        if event.action != "context.evaluate" or event.decision != "allow":
            return
        now = time.monotonic()
        session = event.request.attributes.get("session_id")
        self.bundles[event.event_id] = (now, event.tenant)
        if isinstance(session, str) and session:
            self.sessions[(event.tenant, session)] = (now, event.event_id)
            self.sessions.move_to_end((event.tenant, session))
        cutoff = now - self.settings.correlation_window
        for table in (self.sessions, self.bundles):
            while table and (len(table) > _MAX_SESSIONS or next(iter(table.values()))[0] < cutoff):
                table.popitem(last=False)

    async def _feedback(self, feedback: Feedback) -> None:
        bundle = ""
        if feedback.audit_id and self.bundles.get(feedback.audit_id, (0, ""))[1] == feedback.tenant:
            bundle = feedback.audit_id
        elif feedback.session_id:
            bundle = self.sessions.get((feedback.tenant, feedback.session_id), (0.0, ""))[1]
        tokens = feedback.tokens or TokenUsage()
        reward = feedback.reward if feedback.reward is not None else feedback.utility or 0.0
        day = time.strftime("%Y-%m-%d", time.gmtime(feedback.time or time.time()))
        entry = LedgerEntry(
            feedback.tenant,
            tokens.model,
            day,
            float(reward),
            tokens.prompt_tokens,
            tokens.completion_tokens,
            bool(bundle),
            bundle,
        )
        async with await self.path.open("ab") as fh:
            await fh.write(msgspec.json.encode(entry) + b"\n")
        self._count(entry)

    def _count(self, entry: LedgerEntry) -> None:
        key = (entry.tenant, entry.model, entry.day)
        row = self.rows.get(key)
        if row is None:
            row = self.rows[key] = LedgerRow(entry.tenant, entry.model, entry.day)
        row.feedback += 1
        row.correlated += entry.correlated
        row.reward += entry.reward
        row.prompt_tokens += entry.prompt_tokens
        row.completion_tokens += entry.completion_tokens
