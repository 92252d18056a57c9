"""The plugins (dynamics models and planners) and name -> class lookup:
``create('model', 'gp')``.

:data:`PLUGINS` is the only list of plugins: the CLI, the generated docs/PARAMETERS.md,
the bring-up plan and the tests read it. Each entry names the module that defines the
plugin; the module registers its class with :func:`register` when imported, and a lookup
imports only that module (torch is loaded only for the families that need it).

Unknown names fail with the list of what is available, so a typo in a parameter file
reads as a clear error instead of a stack trace.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Plugin:
    """One plugin: the module that registers it and its role.

    Roles -- models: ``learned`` (fitted from data) or ``known`` (the MJCF itself).
    Planners: ``mpc`` (model-based; the launches build every one of them), ``explorer``
    (model-free; plans while a learning robot has no model yet) or ``trained`` (runs a
    trained artifact the user names in a params file).
    """
    module: str
    role: str


PLUGINS: dict[str, dict[str, Plugin]] = {
    "model": {
        "linear": Plugin("mbrl_ros.core.models.linear", "learned"),
        "tvlg": Plugin("mbrl_ros.core.models.tvlg", "learned"),
        "gp": Plugin("mbrl_ros.core.models.gp", "learned"),
        "ensemble": Plugin("mbrl_ros.core.models.ensemble", "learned"),
        "mujoco": Plugin("mbrl_ros.core.models.mujoco_model", "known"),
    },
    "planner": {
        "ilqr": Plugin("mbrl_ros.core.planners.ilqr.planner", "mpc"),
        "mppi": Plugin("mbrl_ros.core.planners.mppi.planner", "mpc"),
        "cem": Plugin("mbrl_ros.core.planners.cem.planner", "mpc"),
        "casadi_mpc": Plugin("mbrl_ros.core.planners.casadi_mpc.planner", "mpc"),
        "excitation": Plugin("mbrl_ros.core.planners.excitation.planner", "explorer"),
        "gps_policy": Plugin("mbrl_ros.core.planners.gps_policy.planner", "trained"),
        "lg_controller": Plugin("mbrl_ros.core.planners.lg_controller.planner", "trained"),
    },
}

_REGISTRY: dict[str, dict[str, type]] = {}
# Further modules that register entries of a kind (add_provider): plugins outside the
# package, e.g. a user's planner, imported on the first lookup of that kind.
_PROVIDERS: dict[str, list[str]] = {}
_NAMED: dict[str, dict[str, str]] = {}


def names(kind: str, role: str | None = None) -> tuple[str, ...]:
    """The names :data:`PLUGINS` lists for ``kind`` (of ``role`` only, if given), in table
    order. KeyError for an unknown kind."""
    return tuple(n for n, p in PLUGINS[kind].items() if role is None or p.role == role)


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
    entry it registers, so looking that name up imports just this module). For plugins
    outside this package; ours are listed in :data:`PLUGINS`."""
    mods = _PROVIDERS.setdefault(kind, [])
    if module not in mods:
        mods.append(module)
    if name is not None:
        _NAMED.setdefault(kind, {})[name] = module


def _module_of(kind: str, name: str) -> str | None:
    plugin = PLUGINS.get(kind, {}).get(name)
    return plugin.module if plugin is not None else _NAMED.get(kind, {}).get(name)


def _load(kind: str) -> dict[str, type]:
    for plugin in PLUGINS.get(kind, {}).values():
        importlib.import_module(plugin.module)
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
    module = _module_of(kind, name)
    if module is not None and name not in _REGISTRY.get(kind, {}):
        importlib.import_module(module)
        if name not in _REGISTRY.get(kind, {}):
            raise LookupError(f"module {module} does not register {kind} {name!r}")
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
