"""Config checks of back-end server URLs (NATS, Redis, PostgreSQL), shared by the sections
that name one. The errors name the setting and never repeat the URL: it may hold a password."""

from __future__ import annotations

import urllib.parse
from collections.abc import Collection

__all__ = ["check_redis_url", "check_server_url"]


def check_server_url(
    url: str, setting: str, schemes: Collection[str], example: str, *, host: bool = True
) -> urllib.parse.SplitResult:
    """``url`` split, once its scheme is one of ``schemes`` (the first is the one the error
    names), it has a host (unless ``host`` is False: a Unix socket given in the query) and its
    port is a number; else a ValueError naming ``setting`` and showing ``example``."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in schemes or (host and not parts.hostname):
        first, *others = schemes
        also = f" (or {', '.join(s + '://' for s in others)})" if others else ""
        with_host = " with a host" if host else ""
        raise ValueError(f"{setting} must be a {first}:// URL{with_host}{also}, like {example}")
    try:
        parts.port  # noqa: B018 (it checks the port)
    except ValueError:
        raise ValueError(f"{setting}: the port is not a number in 0-65535") from None
    return parts


def check_redis_url(url: str, setting: str) -> None:
    """A URL redis-py connects to over TCP, with a database number if any."""
    parts = check_server_url(url, setting, ("redis", "rediss"), "redis://127.0.0.1:6379/0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"{setting}: the path must be a database number, like /0")
