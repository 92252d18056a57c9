"""Name -> class registries for models and planners: ``create('model', 'gp')``.

Unknown names fail with the list of what is available, so a typo in a parameter file
reads as a clear error instead of a stack trace.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable

_REGISTRY: dict[str, dict[str, type]] = {}
# Modules imported on first lookup of a kind, so registering stays next to each class
# and importing the registry stays cheap (torch is only loaded for models that need it).
_PROVIDERS: dict[str, list[str]] = {"model": [], "planner": []}
# name -> module, for providers that declare their names: lookup imports only that module.
_NAMED: dict[str, dict[str, str]] = {}


def register(kind: str, name: str) -> Callable[[type], type]:
    """Class decorator: ``@register('model', 'linear')``."""
    def deco(cls: type) -> type:
        table = _REGISTRY.setdefault(kind, {})
        if name in table and table[name] is not cls:
            raise ValueError(f"{kind} {name!r} registered twice ({table[name]} and {cls})")
        table[name] = cls
        return cls
    return deco


def add_provider(kind: str, module: str, name: str | None = None) -> None:
    """Declare that importing ``module`` registers entries of ``kind`` (``name``: the one
    entry it registers, so looking that name up imports just this module)."""
    mods = _PROVIDERS.setdefault(kind, [])
    if module not in mods:
        mods.append(module)
    if name is not None:
        _NAMED.setdefault(kind, {})[name] = module


def _load(kind: str) -> dict[str, type]:
    for module in _PROVIDERS.get(kind, []):
        importlib.import_module(module)
    return _REGISTRY.get(kind, {})


def available(kind: str) -> list[str]:
    return sorted(_load(kind))


class UnknownNameError(KeyError):
    """No entry of that name; the message lists the available ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def lookup(kind: str, name: str) -> type:
    module = _NAMED.get(kind, {}).get(name)
    if module is not None and name not in _REGISTRY.get(kind, {}):
        importlib.import_module(module)
    table = _REGISTRY.get(kind, {})
    if name in table:
        return table[name]
    table = _load(kind)
    if name not in table:
        raise UnknownNameError(f"unknown {kind} {name!r}; available: "
                               f"{', '.join(sorted(table)) or 'none'}")
    return table[name]


def create(kind: str, name: str, *args: Any, **kwargs: Any) -> Any:
    return lookup(kind, name)(*args, **kwargs)
