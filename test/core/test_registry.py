"""The plugin registry is the one list of plugins: lookups, the CLI, the bring-up plan and
docs/PARAMETERS.md all follow it."""
import dataclasses
import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import mbrl_ros
from mbrl_ros import bringup
from mbrl_ros.cli import NODE_SETTINGS, build_parser, node_parameter_specs
from mbrl_ros.core import registry
from mbrl_ros.core.settings import setting, specs

DOCS = Path(__file__).resolve().parents[2] / "docs"
MAX_DESCRIPTION = 200
PLUGINS = [(kind, name) for kind in registry.PLUGINS for name in registry.PLUGINS[kind]]


@pytest.mark.parametrize("kind,name", PLUGINS, ids=lambda v: str(v))
def test_every_plugin_registers_itself_from_its_module(kind, name):
    cls = registry.lookup(kind, name)
    module = registry.PLUGINS[kind][name].module
    assert cls.__module__ == module or cls.__module__.startswith(module + ".")
    assert hasattr(cls, "Settings") and specs(cls.Settings)


def test_roles_are_known_and_available_is_the_table():
    assert {p.role for p in registry.PLUGINS["model"].values()} <= {"learned", "known"}
    assert {p.role for p in registry.PLUGINS["planner"].values()} <= \
        {"mpc", "explorer", "trained"}
    for kind in registry.PLUGINS:
        assert set(registry.available(kind)) >= set(registry.names(kind))


def test_a_module_that_does_not_register_its_name_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(registry.PLUGINS["planner"], "bogus",
                        registry.Plugin("mbrl_ros.core.types", "mpc"))
    with pytest.raises(LookupError, match="does not register planner 'bogus'"):
        registry.lookup("planner", "bogus")
    with pytest.raises(registry.UnknownNameError, match="available: .*ilqr"):
        registry.lookup("planner", "nope")


def test_cli_and_bringup_read_the_registry():
    assert bringup.PLANNERS == registry.names("planner", "mpc")
    assert bringup.MODEL_FAMILIES == registry.names("model")
    assert (bringup.EXPLORER,) == registry.names("planner", "explorer")
    controller = [c for c, _ in NODE_SETTINGS["controller"][1] if c.startswith("planner:")]
    assert controller == [f"planner:{p}" for p in registry.names("planner")]
    fitter = [c for c, _ in NODE_SETTINGS["model_fitter"][1] if c.startswith("model:")]
    assert fitter == [f"model:{m}" for m in registry.names("model")]
    sub = {a.dest: a for a in build_parser()._subparsers._group_actions}["command"].choices
    fit_model = next(a for a in sub["fit"]._actions if a.dest == "model")
    assert tuple(fit_model.choices) == registry.names("model")


def test_model_parameters_offer_exactly_the_registered_models():
    from mbrl_ros.core.fitting import FitSettings
    fitter = {sp.name: sp for p, sp in node_parameter_specs("model_fitter") if not p}
    assert fitter["model"].choices == registry.names("model")
    assert {sp.name: sp for sp in specs(FitSettings)}["model"].choices == \
        registry.names("model")


def _section(doc: str, node: str) -> str:
    m = re.search(rf"^## {node}\n(.*?)(?=^## |\Z)", doc, re.S | re.M)
    assert m, f"no '## {node}' section in docs/PARAMETERS.md"
    return m.group(1)


@pytest.mark.parametrize("kind,name", PLUGINS, ids=lambda v: str(v))
def test_every_plugin_parameter_is_in_the_parameters_document(kind, name):
    doc = (DOCS / "PARAMETERS.md").read_text()
    section = _section(doc, "model_fitter" if kind == "model" else "controller")
    missing = [sp.name for sp in specs(registry.lookup(kind, name).Settings)
               if f"| `{name}.{sp.name}` |" not in section]
    assert not missing, f"{kind} {name}: {missing} not in docs/PARAMETERS.md " \
                        "(regenerate with `mbrl-ros params all --markdown`)"


def test_the_docs_parameter_descriptions_name_exist():
    """Descriptions are short (:func:`test_every_settings_description_is_short`); the
    long explanations live in the docs/*.md they name."""
    doc = (DOCS / "PARAMETERS.md").read_text()
    for target in re.findall(r"\]\(([A-Z]+\.md)\)", doc) + re.findall(
            r"docs/([A-Z]+\.md)", doc):
        assert (DOCS / target).is_file(), target


_SETTING_KEYS = frozenset(setting(0, "-").metadata)


def settings_classes() -> dict[str, type]:
    """Every settings dataclass of the package (a dataclass with a field made by
    :func:`~mbrl_ros.core.settings.setting`, nested classes included), by qualified name:
    every module of ``mbrl_ros`` imported. A module that needs a package this environment
    lacks (e.g. ROS ``launch``) is skipped; the test below checks none of the known
    settings goes missing that way."""
    found: dict[str, type] = {}
    seen: set[type] = set()

    def visit(namespace) -> None:
        for value in list(vars(namespace).values()):
            if not inspect.isclass(value) or value in seen or \
                    not value.__module__.startswith("mbrl_ros."):
                continue
            seen.add(value)
            if dataclasses.is_dataclass(value) and any(
                    _SETTING_KEYS <= set(f.metadata) for f in dataclasses.fields(value)):
                found[f"{value.__module__}.{value.__qualname__}"] = value
            visit(value)

    for info in pkgutil.walk_packages(mbrl_ros.__path__, "mbrl_ros."):
        try:
            module = importlib.import_module(info.name)
        except ImportError as e:
            if (e.name or "").split(".")[0] == "mbrl_ros":
                raise
            continue
        visit(module)
    return found


def test_every_settings_description_is_short():
    classes = settings_classes()
    known = {registry.lookup(kind, name).Settings for kind, name in PLUGINS}
    known |= {getattr(importlib.import_module(module), cls)
              for module, entries in NODE_SETTINGS.values() for cls, _ in entries
              if ":" not in cls}
    assert known <= set(classes.values()), "settings classes the walk did not find: " + \
        ", ".join(sorted(c.__qualname__ for c in known - set(classes.values())))
    long = [f"{where}.{sp.name} ({len(sp.doc)} characters)"
            for where, cls in sorted(classes.items()) for sp in specs(cls)
            if len(sp.doc) > MAX_DESCRIPTION]
    assert not long, (f"descriptions over {MAX_DESCRIPTION} characters (move the "
                      "explanation to docs/*.md):\n" + "\n".join(long))
