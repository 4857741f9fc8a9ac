"""The package's public surface: every public name it imports is exported (as for the kernel)."""

from __future__ import annotations

import types

import somabrain.memory as memory


def test_package_exports_every_public_name_it_imports() -> None:
    exported = set(memory.__all__)
    for attr, value in vars(memory).items():
        if attr.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if getattr(value, "__module__", "").startswith("somabrain"):
            assert attr in exported, f"somabrain.memory imports {attr} but does not export it"
    for name in exported:
        assert hasattr(memory, name)


def test_remembered_unpacks_as_a_pair() -> None:
    key, deduplicated = memory.Remembered("k", False)
    assert (key, deduplicated) == ("k", False)
