"""Sequencer: changes run in ticket order; ``exclusive`` work holds the changes behind it."""

from __future__ import annotations

import anyio
import pytest

from somabrain.memory._sequencer import Sequencer

pytestmark = pytest.mark.anyio


async def test_changes_run_in_ticket_order_whatever_order_they_register_in() -> None:
    seq, ran = Sequencer(), []
    first, second = seq.ticket(), seq.ticket()
    async with anyio.create_task_group() as tg:
        tg.start_soon(seq.apply, second, lambda: ran.append("second"))
        await anyio.sleep(0.01)
        assert ran == []  # waits for the first
        tg.start_soon(seq.apply, first, lambda: ran.append("first"))
    assert ran == ["first", "second"] and seq.pending == 0


async def test_exclusive_work_runs_after_earlier_changes_and_holds_later_ones() -> None:
    seq, ran = Sequencer(), []
    earlier = seq.ticket()
    release = anyio.Event()

    async def work() -> None:
        ran.append("work starts")
        await release.wait()
        ran.append("work ends")

    async with anyio.create_task_group() as tg:
        tg.start_soon(seq.exclusive, work)
        await anyio.sleep(0.01)
        assert ran == []  # its turn comes after ``earlier``
        later = seq.ticket()
        tg.start_soon(seq.apply, later, lambda: ran.append("later"))
        await seq.apply(earlier, lambda: ran.append("earlier"))
        await anyio.sleep(0.01)
        assert ran == ["earlier", "work starts"]  # ``later`` registered, and held
        release.set()
    assert ran == ["earlier", "work starts", "work ends", "later"] and seq.pending == 0


async def test_exclusive_work_cancelled_before_its_turn_lets_the_others_run() -> None:
    seq, ran = Sequencer(), []
    earlier = seq.ticket()

    async def work() -> None:
        ran.append("work")

    with anyio.move_on_after(0.01):
        await seq.exclusive(work)  # waits for ``earlier`` until cancelled
    later = seq.ticket()
    await seq.apply(earlier, lambda: ran.append("earlier"))
    await seq.apply(later, lambda: ran.append("later"))
    assert ran == ["earlier", "later"] and seq.pending == 0
