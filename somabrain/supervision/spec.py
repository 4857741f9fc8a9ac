"""Child specifications and the vocabulary of OTP supervision.

Specs are plain runtime objects (the TOML config is turned into them by ``tree.py``). The
numbers in a spec are read by the running supervisor each time it needs them, so a config
reload that changes them takes effect without restarting anything.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from ..actors import Actor, OverflowPolicy

__all__ = [
    "BRUTAL_KILL",
    "ActorSpec",
    "Backoff",
    "ChildSpec",
    "DynamicSpec",
    "Restart",
    "Shutdown",
    "Strategy",
    "SupervisorSpec",
]


class Strategy(StrEnum):
    """Which children restart when one fails (OTP's restart strategies)."""

    ONE_FOR_ONE = "one_for_one"  # only the failed child
    ONE_FOR_ALL = "one_for_all"  # all children: they depend on each other
    REST_FOR_ONE = "rest_for_one"  # the failed child and those started after it


class Restart(StrEnum):
    """When a child that exited is restarted (OTP's restart types)."""

    PERMANENT = "permanent"  # always
    TRANSIENT = "transient"  # only after an abnormal exit (failure or kill)
    TEMPORARY = "temporary"  # never


BRUTAL_KILL: Literal["brutal_kill"] = "brutal_kill"
#: Seconds to wait for a graceful stop before killing, or ``"brutal_kill"``.
Shutdown = float | Literal["brutal_kill"]


@dataclass
class Backoff:
    """Exponential backoff with jitter between restarts of the same supervisor.

    The n-th restart within the intensity period waits
    ``min(max, initial * multiplier ** (n - 1))``, scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so that siblings restarted together do not retry in lockstep.
    """

    initial: float = 0.01
    max: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random) -> float:
        if attempt <= 0 or self.initial <= 0:
            return 0.0
        base = min(self.max, self.initial * self.multiplier ** (attempt - 1))
        if self.jitter:
            base *= 1.0 + rng.uniform(-self.jitter, self.jitter)
        return max(0.0, base)


@dataclass
class ActorSpec:
    """A worker child: an actor made by a zero-argument factory."""

    name: str
    factory: Callable[[], Actor]
    restart: Restart = Restart.PERMANENT
    shutdown: Shutdown = 5.0
    mailbox_size: int | None = None
    overflow: OverflowPolicy | None = None


@dataclass
class SupervisorSpec:
    """A supervisor child with a fixed, ordered list of children.

    A pool is a supervisor whose children are ``size`` copies of ``pool_template``, named
    ``<template name>-<i>``; resizing it adds or removes members at the end.
    """

    name: str
    children: list[ChildSpec] = field(default_factory=list)
    strategy: Strategy = Strategy.ONE_FOR_ONE
    intensity: int = 1
    period: float = 5.0
    backoff: Backoff = field(default_factory=Backoff)
    restart: Restart = Restart.PERMANENT
    shutdown: Shutdown = 30.0
    pool_template: ActorSpec | None = None
    pool_size: int = 0


@dataclass
class DynamicSpec:
    """A dynamic supervisor: children started on demand by key, passivated when idle.

    ``idle_timeout`` seconds without a message stops a child gracefully (``0`` disables
    passivation); the next message for that key starts a new incarnation, which rebuilds its
    state from its store.
    """

    name: str
    template: ActorSpec
    intensity: int = 10
    period: float = 10.0
    backoff: Backoff = field(default_factory=Backoff)
    restart: Restart = Restart.PERMANENT
    shutdown: Shutdown = 30.0
    idle_timeout: float = 300.0
    max_children: int = 100_000

    def as_supervisor_spec(self) -> SupervisorSpec:
        """The supervisor settings of this dynamic supervisor (children come on demand)."""
        return SupervisorSpec(
            name=self.name,
            strategy=Strategy.ONE_FOR_ONE,
            intensity=self.intensity,
            period=self.period,
            backoff=self.backoff,
            restart=self.restart,
            shutdown=self.shutdown,
        )


ChildSpec = ActorSpec | SupervisorSpec | DynamicSpec
