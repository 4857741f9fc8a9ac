"""The edge's governance routes and gate, as a mixin of ``EdgeApp``.

The logic lives in ``somabrain.governance.http`` (decisions read the shared ``Governance``
directly, without an actor hop; loads go through the guardian actor); this module only
adapts it to the edge: refusals become ``HTTPError`` in the error model.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from ..governance import http as gov
from ..governance.policy import Decision, PolicyInput
from .errors import HTTPError, from_validation

if TYPE_CHECKING:
    from ..actors import ActorSystem
    from ..config import SomaConfig
    from .app import Request, Response

__all__ = ["GovernanceHandlers", "http_error"]


def http_error(refusal: gov.GovernanceRefusal) -> HTTPError:
    if refusal.retry_after is not None:
        return HTTPError.retry_later(
            refusal.status, refusal.code, refusal.message, refusal.retry_after
        )
    return HTTPError(refusal.status, refusal.code, refusal.message, field=refusal.field)


class GovernanceHandlers:
    """``/constitution/*`` handlers and the policy gate, mixed into ``EdgeApp``."""

    system: ActorSystem
    config: SomaConfig

    def json(self, value: Any, status: int = 200) -> Response:
        raise NotImplementedError

    def _govern(self, request: PolicyInput) -> Decision:
        """The policy decision for a remember or evaluate; 503 / 403 when refused."""
        try:
            return gov.govern(self.system.resources, request)
        except gov.GovernanceRefusal as refusal:
            raise http_error(refusal) from None

    def _refused_namespaces(
        self, request: PolicyInput, namespaces: Iterable[str]
    ) -> frozenset[str]:
        """The namespaces whose memories may not be given to ``request``'s caller (see
        ``governance.reads``); 503 when no constitution is active."""
        try:
            return gov.refused_namespaces(self.system.resources, request, namespaces)
        except gov.GovernanceRefusal as refusal:
            raise http_error(refusal) from None

    def _unscoped(self, request: PolicyInput) -> PolicyInput:
        """The gate's input for a read over every namespace (``gov.unscoped_reader``)."""
        return gov.unscoped_reader(self.system.resources, request)

    def _govern_bundle(
        self, request: PolicyInput, memory_tags: list[list[str]], weights: list[float]
    ) -> gov.BundleGovernance:
        """Each memory of a bundle decided with its own tags (see ``govern_bundle``)."""
        try:
            return gov.govern_bundle(self.system.resources, request, memory_tags, weights)
        except gov.GovernanceRefusal as refusal:
            raise http_error(refusal) from None

    async def _h_constitution_version(self, request: Request) -> Response:
        try:
            return self.json(gov.constitution_version(self.system.resources))
        except gov.GovernanceRefusal as refusal:
            raise http_error(refusal) from None

    async def _h_constitution_validate(self, request: Request) -> Response:
        try:
            return self.json(gov.constitution_validate(self.system.resources, request.body))
        except gov.GovernanceRefusal as refusal:
            raise http_error(refusal) from None
        except msgspec.ValidationError as exc:
            raise from_validation(exc, prefix="input") from None

    async def _h_constitution_load(self, request: Request) -> Response:
        guardian = self.system.lookup(gov.GUARDIAN_PATH)
        try:
            result = await gov.constitution_load(
                guardian, request.body, timeout=self.config.edge.request_timeout
            )
        except gov.GovernanceRefusal as refusal:
            raise http_error(refusal) from None
        return self.json(result)
