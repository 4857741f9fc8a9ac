"""The Kafka bridge: bus subjects to Kafka topics, and topics back into subjects.

Config (``[kafka]`` for the connection, ``[bridge]`` for the routes)::

    [kafka]
    bootstrap = "127.0.0.1:9092"

    [[bridge.forward]]              # every message on the subjects -> the topic
    subjects = "soma.memory.events"
    topic = "soma.memory.events"

    [[bridge.consume]]              # the topic -> the subject (a consumer group)
    topic = "soma.feedback"
    subject = "soma.in.feedback"
    group = "soma-reward"

Forwarding: the bridge subscribes to each pattern and produces every message to its topic
(acks=all), in batches; the record key is the message's ``key`` header, else its subject, so
the messages of one subject stay in order in one partition. Messages are JSON (msgspec), which
any consumer can read; ``bytes`` payloads pass through untouched. While Kafka is unreachable
the bridge keeps retrying with the batch in hand and, because the in-process bus applies
backpressure, publishers slow down instead of messages being dropped; over NATS a full
subscription counts its drops (see :mod:`.bus`). Audit events do not take this path: the audit
writer has its own cascade with a stronger guarantee.

Consuming: one consumer per route, in its consumer group; each record is published on the
route's subject (as a request when ``ack = "reply"``: then a handler must answer), and the
offsets are committed only after the whole batch was handled, so a crash redelivers rather
than loses (at-least-once; handlers dedupe by the ids the events carry). A consume route may
not feed a subject that a forward route sends back to Kafka (that would loop); the config is
refused.

Kafka's client (aiokafka) runs on asyncio only: a node on the trio backend cannot bridge.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

__all__ = ["BridgeSettings", "ConsumeRoute", "ForwardRoute", "KafkaSettings", "bootstrap_hosts"]

PositiveFloat = Annotated[float, Meta(gt=0)]
PositiveInt = Annotated[int, Meta(ge=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class KafkaSettings(_Section):
    """The Kafka cluster. An empty ``bootstrap`` means no Kafka (the dev node's default)."""

    #: ``host:port[,host:port...]``
    bootstrap: str = ""
    client_id: str = "somabrain"
    #: Create missing topics (with ``partitions`` partitions) when a producer starts.
    create_topics: bool = True
    partitions: PositiveInt = 1
    replication_factor: PositiveInt = 1
    #: Seconds a produce request may take before it counts as failed.
    request_timeout: PositiveFloat = 5.0


class ForwardRoute(_Section):
    #: Subject pattern (NATS wildcards allowed).
    subjects: str
    topic: str


class ConsumeRoute(_Section):
    topic: str
    subject: str
    group: str
    #: ``publish``: commit once published; ``reply``: commit once a handler answered.
    ack: Literal["publish", "reply"] = "publish"
    #: Where a new group starts reading.
    start: Literal["earliest", "latest"] = "earliest"


class BridgeSettings(_Section):
    forward: list[ForwardRoute] = msgspec.field(default_factory=list)
    consume: list[ConsumeRoute] = msgspec.field(default_factory=list)
    #: Messages produced per batch, and seconds between retries while Kafka is down.
    max_batch: PositiveInt = 1000
    retry_interval: PositiveFloat = 1.0


def bootstrap_hosts(bootstrap: str) -> list[tuple[str, int]]:
    """``"a:1,b:2"`` -> ``[("a", 1), ("b", 2)]`` (port 9092 when omitted)."""
    hosts: list[tuple[str, int]] = []
    for item in bootstrap.split(","):
        item = item.strip()
        if not item:
            continue
        host, sep, port = item.rpartition(":")
        hosts.append((host, int(port)) if sep else (item, 9092))
    return hosts
