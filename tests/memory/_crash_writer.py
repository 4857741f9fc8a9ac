"""Child process of test_crash.py: remembers forever, printing each acknowledged key.

Usage: python _crash_writer.py DATA_DIR BACKEND. A key is printed only after ``remember``
returned, i.e. after the group-commit fsync covering it; the parent kills -9 at some point and
checks that every printed key survived.
"""

from __future__ import annotations

import sys

import anyio

from somabrain.memory import Memory, TenantMemory

WRITERS = 8


async def main(data_dir: str) -> None:
    tm = await TenantMemory.open(data_dir, "crash-tenant", fsync="group")
    out = sys.stdout

    async def writer(w: int) -> None:
        i = 0
        previous = None
        while True:
            key = f"w{w}-{i}"
            await tm.remember(
                Memory(key=key, content=f"writer {w} wrote record {i} " * (1 + i % 4))
            )
            if previous is not None and i % 5 == 0:
                await tm.link(key, previous, "follows")
            out.write(key + "\n")
            out.flush()
            previous = key
            i += 1

    out.write("ready\n")
    out.flush()
    async with anyio.create_task_group() as tg:
        for w in range(WRITERS):
            tg.start_soon(writer, w)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], backend=sys.argv[2])
