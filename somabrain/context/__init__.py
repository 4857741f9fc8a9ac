"""The context engine: multi-view recall into a ``ContextBundle``, HRR, planner, adaptation.

Pure logic (no I/O, tested without a node) and the planner actors that serve it:

``hrr``         bind / unbind by circular convolution (FFT), superposition, cleanup
``planner``     hill-climbs the prompt: weighted coverage minus length and count penalties
``builder``     recall result -> ``ContextBundle`` (memory weights, plan, residual vector)
``feedback``    feedback -> the adaptation's inputs (used vs unused view scores, reward)
``adaptation``  exponentiated-gradient weights per tenant, and their durable store
``settings``    the ``[context]`` config section
``messages``    the ``soma.ctx.*`` protocol and the bundle
``actor``       ``PlannerActor``: the pool behind the ``planners`` queue group
``client``      what the HTTP edge calls: request with retry, failures as statuses
"""

from __future__ import annotations

from .adaptation import AdaptationSettings, AdaptationState, AdaptationStore, adapt
from .builder import build_bundle, memory_weights
from .hrr import Projection, bind, cleanup, key_vector, recover, superpose, unbind
from .messages import (
    ADAPTATION_SUBJECT,
    EVALUATE_SUBJECT,
    FEEDBACK_SUBJECT,
    PLANNER_QUEUE,
    AdaptationQuery,
    AdaptationView,
    BundleMemory,
    BundleWorkingMemory,
    ContextBundle,
    ContextFailure,
    Evaluate,
    Feedback,
    FeedbackResult,
)
from .planner import Candidate, Plan, PlannerSettings, plan
from .settings import ContextSettings

__all__ = [
    "ADAPTATION_SUBJECT",
    "EVALUATE_SUBJECT",
    "FEEDBACK_SUBJECT",
    "PLANNER_QUEUE",
    "AdaptationQuery",
    "AdaptationSettings",
    "AdaptationState",
    "AdaptationStore",
    "AdaptationView",
    "BundleMemory",
    "BundleWorkingMemory",
    "Candidate",
    "ContextBundle",
    "ContextFailure",
    "ContextSettings",
    "Evaluate",
    "Feedback",
    "FeedbackResult",
    "Plan",
    "PlannerSettings",
    "Projection",
    "adapt",
    "bind",
    "build_bundle",
    "cleanup",
    "key_vector",
    "memory_weights",
    "plan",
    "recover",
    "superpose",
    "unbind",
]
