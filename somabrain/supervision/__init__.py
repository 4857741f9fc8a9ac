"""Supervision: OTP-style supervisors, dynamic supervisors, pools, and the tree from config."""

from .clock import Clock, SystemClock, VirtualClock
from .config import ConfigError, NodeSettings, SupervisorNode, load_config
from .dynamic import DynamicSupervisor, MaxChildrenError
from .spec import (
    BRUTAL_KILL,
    ActorSpec,
    Backoff,
    ChildSpec,
    DynamicSpec,
    Restart,
    Shutdown,
    Strategy,
    SupervisorSpec,
)
from .supervisor import Supervisor, SupervisorGaveUpError
from .tree import SupervisionTree, import_actor

__all__ = [
    "BRUTAL_KILL",
    "ActorSpec",
    "Backoff",
    "ChildSpec",
    "Clock",
    "ConfigError",
    "DynamicSpec",
    "DynamicSupervisor",
    "MaxChildrenError",
    "NodeSettings",
    "Restart",
    "Shutdown",
    "Strategy",
    "SupervisionTree",
    "Supervisor",
    "SupervisorGaveUpError",
    "SupervisorNode",
    "SupervisorSpec",
    "SystemClock",
    "VirtualClock",
    "import_actor",
    "load_config",
]
