"""Tenant ids: the one rule shared by the edge (tokens, headers) and the memory actors.

A tenant id becomes an actor name (``/root/memory/<tenant>``), part of a file name and a
metrics label, so it is restricted to a safe charset before it goes anywhere: 1 to 64 ASCII
letters, digits, ``_``, ``.`` or ``-``, starting with a letter or digit (no ``/``, no ``..``
on its own, nothing a shell or a path would interpret).
"""

from __future__ import annotations

import re

__all__ = ["TENANT_PATTERN", "valid_tenant"]

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def valid_tenant(tenant: str) -> bool:
    return TENANT_PATTERN.fullmatch(tenant) is not None
