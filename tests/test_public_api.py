"""Every public module declares ``__all__``, and every public name it imports is listed."""

from __future__ import annotations

import importlib
import pkgutil
import types

import pytest

import somabrain


def public_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(somabrain.__path__, "somabrain."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


@pytest.mark.parametrize("name", public_modules())
def test_public_modules_declare_all(name: str) -> None:
    module = importlib.import_module(name)
    if name.endswith("__main__"):
        return
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    for attr in module.__all__:
        assert hasattr(module, attr), f"{name}.__all__ lists missing {attr}"


@pytest.mark.parametrize("name", ["somabrain.actors", "somabrain.supervision"])
def test_packages_export_every_public_name_they_import(name: str) -> None:
    package = importlib.import_module(name)
    exported = set(package.__all__)
    for attr, value in vars(package).items():
        if attr.startswith("_") or isinstance(value, types.ModuleType):
            continue
        if not getattr(value, "__module__", "").startswith("somabrain"):
            continue  # typing helpers, constants and the like
        assert attr in exported, f"{name} imports {attr} but does not export it"
