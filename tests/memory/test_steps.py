"""Work in steps: ``finish`` runs it whole, ``dropping`` lets go of containers in slices."""

from __future__ import annotations

from collections.abc import Generator

from somabrain.memory._steps import dropping, finish


def test_finish_runs_every_step_and_returns_the_result() -> None:
    done: list[int] = []

    def work() -> Generator[None, None, str]:
        for i in range(3):
            done.append(i)
            yield
        return "result"

    assert finish(work()) == "result" and done == [0, 1, 2]


def test_dropping_empties_large_containers_a_slice_at_a_time() -> None:
    items = list(range(10))
    table = {i: str(i) for i in range(7)}
    small = [1]
    held = [items, table, small]
    sizes: list[tuple[int, int, int]] = []
    for _ in dropping(held, 4):
        sizes.append((len(items), len(table), len(small)))
    # The last container first; no slice larger than 4; a container of 4 or fewer is let go
    # of whole (only the reference to it is dropped: nobody else holds it).
    assert sizes == [(10, 7, 1), (10, 3, 1), (10, 3, 1), (6, 3, 1), (2, 3, 1), (2, 3, 1)]
    assert not held
