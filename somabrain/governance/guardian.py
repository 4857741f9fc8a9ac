"""The constitution guardian: the one actor that changes the node's constitution.

On start (every incarnation) it reads the history from the constitution directory
(``governance.directory``, default ``<data-dir>/constitution``), verifies it as a chain, adds
a dev version when bootstrapping a dev node (:mod:`.dev`), compiles the active version's
policies and installs it in the shared :class:`~.service.Governance`
(``system.resources["governance"]``), then publishes it on ``soma.constitution.revisions``.
A missing, tampered or under-signed history does not stop the node: the guardian starts,
the Governance records the reason, and every decision fails closed (503) until a valid
version is loaded.

It answers :mod:`.messages` requests through its ref (``ask``) and on ``soma.gov.<op>``
subjects. Reads are also served without it by the Governance; loads only go through it, so
versions are verified and stored one at a time, in order.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec

from ..actors import Actor, Msg, Subscription
from ._exceptions import ConstitutionError, GovernanceError
from .constitution import VerifiedConstitution, parse_signed, verify, verify_chain
from .dev import default_policies_dir, next_dev_version
from .messages import (
    REVISIONS_SUBJECT,
    SUBJECT_PREFIX,
    Check,
    GetVersion,
    Load,
    LoadResult,
    Revision,
    Validate,
    VersionInfo,
)
from .service import ActiveConstitution, Governance
from .settings import GovernanceSettings
from .store import read_history, write_version

__all__ = ["GuardianActor", "constitution_directory", "governance_settings"]

logger = logging.getLogger("somabrain.governance")

_SUBSCRIPTION_KEY = "governance.subscription"


def governance_settings(resources: dict[str, Any]) -> GovernanceSettings:
    settings = getattr(resources.get("config"), "governance", None)
    return settings if isinstance(settings, GovernanceSettings) else GovernanceSettings()


def constitution_directory(resources: dict[str, Any], settings: GovernanceSettings) -> Path:
    if settings.directory:
        return Path(settings.directory)
    return Path(resources.get("data_dir") or ".somabrain") / "constitution"


def _say(message: str) -> None:
    print(f"governance: {message}", flush=True)
    logger.info(message)


class GuardianActor(Actor):
    def __init__(self) -> None:
        self._chain: list[VerifiedConstitution] = []
        #: Why the stored history cannot be extended (a broken chain): loads are refused.
        self._broken = ""

    async def on_start(self) -> None:
        system = self.context.system
        resources = system.resources
        self.settings = governance_settings(resources)
        governance = resources.get("governance")
        if not isinstance(governance, Governance):
            governance = Governance(cache_size=self.settings.decision_cache_size)
            resources["governance"] = governance
        self.governance = governance
        self.directory = constitution_directory(resources, self.settings)
        source = "start"
        try:
            self._chain = verify_chain(
                read_history(self.directory), genesis=self.settings.genesis or None
            )
            if self.settings.bootstrap == "dev":
                policies = (
                    Path(self.settings.policies_dir)
                    if self.settings.policies_dir
                    else default_policies_dir()
                )
                previous = self._chain[-1] if self._chain else None
                signed, message = next_dev_version(self.directory, policies, previous)
                if signed is not None:
                    verified = verify(signed, previous=previous)
                    ActiveConstitution.build(verified)  # refuse policies that do not compile
                    write_version(self.directory, verified)
                    self._chain.append(verified)
                    source = "bootstrap"
                    _say(f"{message} (version {verified.version}, {verified.checksum[:16]}...)")
                    await self._audit_quietly(
                        "constitution.bootstrap", "allow", message, verified.checksum,
                        version=verified.version,
                    )  # fmt: skip
        except (GovernanceError, OSError) as exc:
            self._broken = f"constitution history in {self.directory} is invalid: {exc}"
            governance.fail(self._broken)
            _say(f"NOT GOVERNED, failing closed: {self._broken}")
            await self._audit_quietly("constitution.invalid", "error", self._broken, "")
        else:
            if not self._chain:
                governance.fail(
                    f"no constitution in {self.directory}: publish one with "
                    "'somabrain constitution publish' (governance.bootstrap is 'none')"
                )
                _say(f"NOT GOVERNED, failing closed: {governance.reason}")
            else:
                await self._activate(self._chain[-1], source)
        await self._subscribe()

    async def _subscribe(self) -> None:
        # The subscription delivers to the ref, which outlives incarnations: subscribe once.
        resources = self.context.system.resources
        existing = resources.get(_SUBSCRIPTION_KEY)
        if isinstance(existing, Subscription):
            return
        resources[_SUBSCRIPTION_KEY] = await self.context.system.bus.subscribe_actor(
            f"{SUBJECT_PREFIX}.>", self.context.ref
        )

    async def on_stop(self) -> None:
        subscription = self.context.system.resources.pop(_SUBSCRIPTION_KEY, None)
        if isinstance(subscription, Subscription):
            await subscription.unsubscribe()

    async def _activate(self, verified: VerifiedConstitution, source: str) -> None:
        try:
            active = ActiveConstitution.build(
                verified, cache_size=self.settings.decision_cache_size
            )
        except ConstitutionError as exc:
            self._broken = str(exc)
            self.governance.fail(self._broken)
            _say(f"NOT GOVERNED, failing closed: {exc}")
            return
        self.governance.install(active, self._chain)
        doc = verified.doc
        revision = Revision(
            version=verified.version,
            checksum=verified.checksum,
            previous=doc.previous,
            threshold=doc.threshold,
            signers=[s.id for s in doc.signers],
            signed_by=list(verified.signed_by),
            source=source,
            node=self.context.system.name,
            activated_at=active.activated_at,
        )
        try:
            await self.context.system.bus.publish(REVISIONS_SUBJECT, revision)
        except Exception:  # the revision is active and stored; publishing is best effort
            logger.exception("could not publish constitution revision %d", verified.version)

    async def _audit(
        self, action: str, decision: str, reason: str, checksum: str, **attributes: object
    ) -> str | None:
        """Record a governance event when the node has an audit log; returns its id.

        Raises ``AuditUnavailableError`` when the log exists but the event could not be made
        durable: the change it describes must then be reported as failed.
        """
        audit = self.context.system.resources.get("audit")
        if audit is None or not hasattr(audit, "record"):
            return None
        from ..audit.event import AuditDraft, request_meta

        event_id: str = await audit.record(
            AuditDraft(
                tenant="",
                actor="guardian",
                action=action,
                decision=decision,  # type: ignore[arg-type]
                reason=reason[:1024],
                constitution_checksum=checksum,
                request=request_meta(attributes=attributes),
            )
        )
        return event_id

    async def _audit_quietly(self, *args: Any, **kwargs: Any) -> None:
        try:
            await self._audit(*args, **kwargs)
        except Exception as exc:  # the refusal or failure stands whether recorded or not
            logger.warning("could not audit a governance event: %r", exc)

    # ------------------------------------------------------------------ messages

    async def receive(self, message: Any) -> Any:
        if isinstance(message, Msg):
            return await self._from_bus(message)
        return await self._handle(message)

    async def _handle(self, message: Any) -> Any:
        match message:
            case Check(input=request):
                return self.governance.decide(request)
            case Validate(input=rego_input):
                return self.governance.validate(rego_input)
            case Load(document=document, source=source):
                return await self._load(document, source)
            case GetVersion():
                return msgspec.convert(self.governance.version_info(), VersionInfo)
        raise TypeError(f"the guardian does not handle {type(message).__name__}")

    async def _from_bus(self, msg: Msg) -> None:
        try:
            reply: Any = await self._handle(msg.data)
        except GovernanceError as exc:
            reply = {"error": type(exc).__name__, "message": str(exc)}
        except TypeError as exc:
            reply = {"error": "TypeError", "message": str(exc)}
        if msg.reply:
            await msg.respond(reply)

    async def _load(self, document: Any, source: str) -> LoadResult:
        try:
            if self._broken and not self._chain:
                raise ConstitutionError("history_invalid", self._broken)
            if self._broken:
                raise ConstitutionError(
                    "history_invalid", f"{self._broken}; repair the history first"
                )
            signed = parse_signed(document)
            previous = self._chain[-1] if self._chain else None
            verified = verify(signed, previous=previous)
            if previous is None:
                if verified.version != 1:
                    raise ConstitutionError(
                        "wrong_previous",
                        f"no constitution is active: the first must be version 1, "
                        f"got {verified.version}",
                    )
                genesis = self.settings.genesis
                if genesis and verified.checksum != genesis:
                    raise ConstitutionError(
                        "genesis_mismatch",
                        f"checksum {verified.checksum[:16]}... is not the configured "
                        f"genesis {genesis[:16]}...",
                    )
            ActiveConstitution.build(verified)  # refuse policies that do not compile
        except ConstitutionError as exc:
            if exc.code == "version_conflict" and self._chain:
                current = self._chain[-1]
                try:
                    same = parse_signed(document).document == current.document
                except ConstitutionError:
                    same = False
                if same:
                    return LoadResult(
                        accepted=True,
                        version=current.version,
                        checksum=current.checksum,
                        unchanged=True,
                    )
            await self._audit_quietly(
                "constitution.load", "deny", str(exc), self.governance.checksum,
                code=exc.code, source=source,
            )  # fmt: skip
            return LoadResult(
                accepted=False,
                code=exc.code,
                reason=str(exc),
                failures=[f.to_dict() for f in exc.failures],
            )
        try:
            audit_id = await self._audit(
                "constitution.load", "allow", "", verified.checksum,
                version=verified.version, signed_by=",".join(verified.signed_by), source=source,
            )  # fmt: skip
        except Exception as exc:
            return LoadResult(
                accepted=False, code="audit_unavailable", reason=f"cannot audit the load: {exc}"
            )
        try:
            write_version(self.directory, verified)
        except OSError as exc:
            return LoadResult(accepted=False, code="storage_failed", reason=f"cannot store: {exc}")
        self._chain.append(verified)
        await self._activate(verified, source)
        _say(
            f"version {verified.version} ({verified.checksum[:16]}...) active, "
            f"signed by {', '.join(verified.signed_by)} ({source}, {time.strftime('%H:%M:%S')})"
        )
        return LoadResult(
            accepted=True, version=verified.version, checksum=verified.checksum, audit_id=audit_id
        )
