"""Prometheus metrics of the node, in the text exposition format (version 0.0.4).

The edge counts requests and observes latencies per route, method and status (a histogram);
everything else is read from the running system when ``/metrics`` is scraped: mailbox depths,
restarts and state of every actor and supervisor in the tree, dead letters, live memory actors,
rate-limited requests. Written by hand (a few dozen lines) rather than with prometheus-client:
the hot path is one dict lookup and one bisect per request.

Other parts of the node add their own families without importing the edge: an actor puts a
callable into ``system.resources["metrics.sources"]`` (a dict, keyed by the actor's name, so
a restarted incarnation replaces its predecessor's) returning ``(name, kind, help, samples)``
tuples, ``samples`` being ``(labels, value)`` pairs; :func:`render_sources` renders them at
scrape time (the audit writer's batches and tiers, the integrity worker's findings).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from typing import Any

from ..supervision.tree import inspected_nodes

__all__ = ["LATENCY_BUCKETS", "Metrics", "render_sources", "render_tree_metrics"]

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Mapping[str, str]) -> str:
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Histogram:
    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.count = 0
        self.sum = 0.0


class Metrics:
    """Request counters and latency histograms of the edge (survive edge restarts)."""

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int], int] = {}
        self._latency: dict[tuple[str, str], _Histogram] = {}
        self.rate_limited: dict[str, int] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        hist = self._latency.get((route, method))
        if hist is None:
            hist = self._latency[(route, method)] = _Histogram()
        hist.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        hist.count += 1
        hist.sum += seconds

    def count_rate_limited(self, tenant: str) -> None:
        self.rate_limited[tenant] = self.rate_limited.get(tenant, 0) + 1

    def request_count(self, route: str, method: str, status: int) -> int:
        return self._requests.get((route, method, status), 0)

    def route_summary(self) -> list[dict[str, Any]]:
        """Per route and method: answers by status, count, latency sum, and the upper bounds
        of the buckets holding the median and the 99th percentile (telemetry)."""
        statuses: dict[tuple[str, str], dict[str, int]] = {}
        for (route, method, status), n in sorted(self._requests.items()):
            statuses.setdefault((route, method), {})[str(status)] = n
        out: list[dict[str, Any]] = []
        for (route, method), hist in sorted(self._latency.items()):
            out.append(
                {
                    "route": route,
                    "method": method,
                    "statuses": statuses.get((route, method), {}),
                    "count": hist.count,
                    "seconds_sum": hist.sum,
                    "p50_seconds": _bucket_quantile(hist, 0.5),
                    "p99_seconds": _bucket_quantile(hist, 0.99),
                }
            )
        return out

    def render(self, extra: Iterable[str] = ()) -> str:
        lines: list[str] = [
            "# HELP soma_http_requests_total HTTP requests handled by the edge.",
            "# TYPE soma_http_requests_total counter",
        ]
        for (route, method, status), n in sorted(self._requests.items()):
            labels = _labels({"route": route, "method": method, "status": str(status)})
            lines.append(f"soma_http_requests_total{labels} {n}")
        lines += [
            "# HELP soma_http_request_duration_seconds Time from request start to response end.",
            "# TYPE soma_http_request_duration_seconds histogram",
        ]
        for (route, method), hist in sorted(self._latency.items()):
            base = {"route": route, "method": method}
            cumulative = 0
            for bound, n in zip((*LATENCY_BUCKETS, math.inf), hist.buckets, strict=True):
                cumulative += n
                labels = _labels({**base, "le": _number(bound)})
                lines.append(f"soma_http_request_duration_seconds_bucket{labels} {cumulative}")
            lines.append(f"soma_http_request_duration_seconds_sum{_labels(base)} {hist.sum!r}")
            lines.append(f"soma_http_request_duration_seconds_count{_labels(base)} {hist.count}")
        lines += [
            "# HELP soma_rate_limited_total Requests refused with 429, per tenant.",
            "# TYPE soma_rate_limited_total counter",
        ]
        for tenant, n in sorted(self.rate_limited.items()):
            lines.append(f"soma_rate_limited_total{_labels({'tenant': tenant})} {n}")
        lines.extend(extra)
        return "\n".join(lines) + "\n"


def _bucket_quantile(hist: _Histogram, q: float) -> float:
    """The upper bound of the bucket holding quantile ``q`` (0 when empty; the largest finite
    bound stands for the overflow bucket, JSON having no infinity)."""
    if not hist.count:
        return 0.0
    rank = q * hist.count
    cumulative = 0
    for bound, n in zip(LATENCY_BUCKETS, hist.buckets, strict=False):
        cumulative += n
        if cumulative >= rank:
            return bound
    return LATENCY_BUCKETS[-1]


def render_tree_metrics(
    tree: Mapping[str, Any], dead_letters: Mapping[str, Any], ready: bool
) -> list[str]:
    """Gauges and counters read from ``SupervisionTree.inspect()`` and the dead letters."""
    nodes = list(inspected_nodes(tree))
    actors = [n for n in nodes if n.get("kind") == "actor"]
    out = [
        "# HELP soma_tree_ready 1 when every permanent child of the tree is running.",
        "# TYPE soma_tree_ready gauge",
        f"soma_tree_ready {int(ready)}",
        "# HELP soma_mailbox_depth Messages waiting in an actor's mailbox.",
        "# TYPE soma_mailbox_depth gauge",
    ]
    out += [
        f"soma_mailbox_depth{_labels({'path': a['path']})} {a['mailbox_depth']}" for a in actors
    ]
    out += [
        "# HELP soma_mailbox_capacity Capacity of an actor's mailbox.",
        "# TYPE soma_mailbox_capacity gauge",
    ]
    out += [
        f"soma_mailbox_capacity{_labels({'path': a['path']})} {a['mailbox_capacity']}"
        for a in actors
    ]
    out += [
        "# HELP soma_restarts_total Restarts of an actor or supervisor by its supervisor.",
        "# TYPE soma_restarts_total counter",
    ]
    out += [
        f"soma_restarts_total{_labels({'path': n['path'], 'kind': n['kind']})} {n['restarts']}"
        for n in nodes
    ]
    out += [
        "# HELP soma_actor_running 1 when the actor or supervisor is running.",
        "# TYPE soma_actor_running gauge",
    ]
    out += [
        f"soma_actor_running{_labels({'path': n['path']})} {int(n['state'] == 'running')}"
        for n in nodes
    ]
    dynamic = [n for n in nodes if n.get("kind") == "dynamic"]
    out += [
        "# HELP soma_dynamic_children Live children of a dynamic supervisor (memory actors).",
        "# TYPE soma_dynamic_children gauge",
    ]
    out += [
        f"soma_dynamic_children{_labels({'path': d['path']})} {len(d.get('children', ()))}"
        for d in dynamic
    ]
    out += [
        "# HELP soma_passivations_total Idle children stopped by a dynamic supervisor.",
        "# TYPE soma_passivations_total counter",
    ]
    out += [
        f"soma_passivations_total{_labels({'path': d['path']})} {d.get('passivations', 0)}"
        for d in dynamic
    ]
    out += [
        "# HELP soma_dead_letters_total Messages sent to actors that were not running.",
        "# TYPE soma_dead_letters_total counter",
        f"soma_dead_letters_total {dead_letters.get('total', 0)}",
    ]
    by_recipient = dead_letters.get("by_recipient", {})
    out += [
        "# HELP soma_dead_letters_by_recipient_total Dead letters per recipient path.",
        "# TYPE soma_dead_letters_by_recipient_total counter",
    ]
    out += [
        f"soma_dead_letters_by_recipient_total{_labels({'path': p})} {n}"
        for p, n in sorted(by_recipient.items())
    ]
    return out


def render_sources(sources: Mapping[str, Any]) -> list[str]:
    """The families of every registered source (see the module doc); a failing source is
    skipped rather than failing the scrape."""
    out: list[str] = []
    for _, source in sorted(sources.items()):
        try:
            families = list(source())
        except Exception:
            continue
        for name, kind, help_text, samples in families:
            out += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            out += [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples]
    return out
