"""Every shipped parameter file names known nodes and only valid parameters."""
from pathlib import Path

import pytest
import yaml

from mbrl_ros.cli import NODE_SETTINGS, node_parameter_specs
from mbrl_ros.core.settings import SettingsError, coerce

CONFIG = Path(__file__).resolve().parents[2] / "config"
# gps_*.yaml are `mbrl-ros gps --config` run files, not ROS parameter files (checked by
# test/core/test_gps_config.py).
FILES = sorted(p for p in CONFIG.glob("*.yaml") if not p.name.startswith("gps_"))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def check_params_file(path: Path) -> list[str]:
    """Problems found in a --params-file YAML (empty list: valid)."""
    problems = []
    doc = yaml.safe_load(path.read_text())
    if not isinstance(doc, dict) or not doc:
        return [f"{path.name}: not a parameter file"]
    for node, section in doc.items():
        name = node.strip("/").split("/")[-1]
        if name not in NODE_SETTINGS:
            problems.append(f"{path.name}: unknown node {node!r}")
            continue
        params = _flatten((section or {}).get("ros__parameters", {}))
        specs = {prefix + sp.name: sp for prefix, sp in node_parameter_specs(name)}
        for key, value in params.items():
            if key not in specs:
                problems.append(f"{path.name}: {name}: unknown parameter {key!r}")
                continue
            try:
                coerce(specs[key], value)
            except SettingsError as e:
                problems.append(f"{path.name}: {name}: {e}")
    return problems


def test_there_are_config_files():
    assert {"sim.yaml", "data_logger.yaml", "excitation.yaml"} <= {f.name for f in FILES}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_config_file_is_valid(path):
    assert check_params_file(path) == []


def test_checker_catches_bad_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sim:\n  ros__parameters:\n    publish_rate: -1.0\n    bogus: 1\n"
                   "nobody:\n  ros__parameters: {}\n")
    problems = "\n".join(check_params_file(bad))
    assert "publish_rate" in problems and "bogus" in problems and "nobody" in problems


def test_parameters_document_is_current():
    from mbrl_ros.cli import parameters_document
    doc = (CONFIG.parent / "docs" / "PARAMETERS.md").read_text()
    assert doc.strip() == parameters_document().strip(), \
        "docs/PARAMETERS.md is stale: regenerate with `mbrl-ros params all --markdown`"


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_shipped_sections_match_the_node_in_any_namespace(path):
    # A plain 'controller:' key matches only /controller; launched under a namespace
    # (namespace:=arm_a -> /arm_a/controller) the node would silently ignore the file.
    from mbrl_ros.cli import node_key
    doc = yaml.safe_load(path.read_text())
    assert all(key == node_key(key.split("/")[-1]) for key in doc), \
        f"{path.name}: keys {list(doc)} must be '/**/<node>'"


def test_generated_parameter_file_uses_the_namespace_wildcard(capsys, tmp_path):
    from mbrl_ros.cli import main
    assert main(["params", "sim"]) == 0
    generated = tmp_path / "sim.yaml"
    generated.write_text(capsys.readouterr().out)
    assert list(yaml.safe_load(generated.read_text())) == ["/**/sim"]
    assert check_params_file(generated) == []
