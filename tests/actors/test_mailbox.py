"""The mailbox: bounded queue, waiting senders, and what a cancelled sender leaves behind."""

from __future__ import annotations

import anyio
import pytest

from somabrain.actors._backend import current_backend
from somabrain.actors.mailbox import Mailbox

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_plain_asyncio_cancel_after_the_wake_up_passes_the_slot_on() -> None:
    """``task.cancel()`` (``asyncio.wait_for``, ``asyncio.timeout``) lands even when the
    task's wake-up is already scheduled, unlike anyio's cancel scopes: the slot it was woken
    for must go to the next sender."""
    import asyncio

    mailbox = Mailbox(current_backend(), "/t", capacity=1)
    mailbox.put_nowait("queued")
    first = asyncio.ensure_future(mailbox.put("first"))
    second = asyncio.ensure_future(mailbox.put("second"))
    await anyio.wait_all_tasks_blocked()
    assert mailbox.get_nowait() == "queued"  # wakes ``first``...
    first.cancel()  # ...and cancels it before it runs
    with anyio.fail_after(5):
        await second
    assert first.cancelled()
    assert list(mailbox.drain()) == ["second"]
