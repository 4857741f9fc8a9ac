"""The ``[governance]`` section of the node's config."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = ["GovernanceSettings"]


class GovernanceSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Where the constitution comes from and how policies are evaluated.

    ``bootstrap = "dev"`` (the default, for the dev node): when the constitution directory
    holds no version yet, the guardian creates a dev signer key (``dev-signer.key``, mode
    0600) and a dev constitution signed by it (threshold 1), from ``policies_dir``, and says
    so; while the dev signer alone governs, a change to the policies on disk is signed into a
    new version at the next start. ``"none"``: the node starts without a constitution (not
    ready, fail closed) until one is published (``somabrain constitution publish``).
    """

    bootstrap: Literal["dev", "none"] = "dev"
    #: The constitution history (one signed file per version);
    #: default ``<data-dir>/constitution``.
    directory: str = ""
    #: Rego modules and ``data.json`` for dev constitutions;
    #: default: the source tree's ``policies/``.
    policies_dir: str = ""
    #: When set, version 1 of the history must have this checksum (the trust anchor).
    genesis: Annotated[str, Meta(pattern=r"^([0-9a-f]{128})?$")] = ""
    #: Decisions kept in the LRU decision cache (0 turns it off).
    decision_cache_size: Annotated[int, Meta(ge=0)] = 4096
