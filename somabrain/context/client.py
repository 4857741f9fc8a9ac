"""Asking the planner pool over the bus: what the HTTP edge calls for ``/context/*``.

``request`` sends one request on its subject (queue group ``planners``: one member answers) and
turns every way it can fail into a ``ContextFailure`` with the HTTP status to answer, so that
nothing is lost silently:

* no planner subscribed -> 503 ``no_planner`` (the pool is down or restarting);
* the planner was killed while handling it (it answers ``planner_restarted`` on its way out) or
  no answer came in time -> the request is sent again, up to ``attempts`` times in all, for the
  idempotent requests (evaluate, adaptation state); a feedback is not re-sent, since it may
  have been applied before the planner died: 503 and the agent decides;
* anything else the planner refused comes back as its ``ContextFailure``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ..actors import BusClosedError, NoRespondersError, RequestTimeoutError
from .messages import (
    ADAPTATION_SUBJECT,
    EVALUATE_SUBJECT,
    FEEDBACK_SUBJECT,
    AdaptationQuery,
    ContextFailure,
    ContextRequest,
    Evaluate,
    Feedback,
)

__all__ = ["request", "subject_of"]


def subject_of(message: ContextRequest) -> str:
    if isinstance(message, Evaluate):
        return EVALUATE_SUBJECT
    if isinstance(message, Feedback):
        return FEEDBACK_SUBJECT
    if isinstance(message, AdaptationQuery):
        return ADAPTATION_SUBJECT
    raise TypeError(f"not a context request: {type(message).__name__}")


async def request(bus: Any, message: ContextRequest, *, timeout: float, attempts: int = 2) -> Any:
    """The planner's reply to ``message``, or a ``ContextFailure`` (module docstring)."""
    subject = subject_of(message)
    retryable = not isinstance(message, Feedback)
    last = ContextFailure(status=503, code="unavailable", message="no attempt made")
    for attempt in range(1, max(1, attempts) + 1):
        if isinstance(message, Evaluate):
            message = msgspec.structs.replace(message, attempt=attempt)
        try:
            reply = await bus.request(subject, message, timeout=timeout)
        except NoRespondersError:
            return ContextFailure(
                status=503,
                code="no_planner",
                retry_after=1.0,
                message="no planner is subscribed to " + subject,
            )
        except RequestTimeoutError:
            last = ContextFailure(
                status=503,
                code="timeout",
                retry_after=1.0,
                message=f"no planner answered within {timeout:g} s",
            )
        except BusClosedError as exc:
            return ContextFailure(status=503, code="unavailable", message=str(exc), retry_after=1.0)
        else:
            data = reply.data
            if not (isinstance(data, ContextFailure) and data.code == "planner_restarted"):
                return data
            last = data
        if not retryable:
            break
    if not retryable and last.code in ("planner_restarted", "timeout"):
        return ContextFailure(
            status=503,
            code=last.code,
            retry_after=1.0,
            message=last.message + "; the feedback may not have been applied",
        )
    return last
