"""The plugin registry is the one list of plugins: lookups, the CLI, the bring-up plan and
docs/PARAMETERS.md all follow it."""
import re
from pathlib import Path

import pytest

from mbrl_ros import bringup
from mbrl_ros.cli import NODE_SETTINGS, build_parser, node_parameter_specs
from mbrl_ros.core import registry
from mbrl_ros.core.settings import specs

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


def test_parameter_descriptions_are_short_and_the_long_ones_live_in_docs():
    long = [f"{node}: {prefix}{sp.name} ({len(sp.doc)} characters)"
            for node in NODE_SETTINGS for prefix, sp in node_parameter_specs(node)
            if len(sp.doc) > MAX_DESCRIPTION]
    assert not long, (f"descriptions over {MAX_DESCRIPTION} characters (move the "
                      "explanation to docs/*.md):\n" + "\n".join(long))
    doc = (DOCS / "PARAMETERS.md").read_text()
    for target in re.findall(r"\]\(([A-Z]+\.md)\)", doc) + re.findall(
            r"docs/([A-Z]+\.md)", doc):
        assert (DOCS / target).is_file(), target
