"""The shipped `mbrl-ros gps --config` files load, match their robots, and bad files are
refused with a clear error."""
from pathlib import Path

import numpy as np
import pytest

from mbrl_ros.core.algorithms.gps_run import GPSRunConfig, load_config
from mbrl_ros.sim.env import MujocoSim

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("name", ["gps_arm2.yaml", "gps_arm7.yaml"])
def test_shipped_gps_configs_load_and_fit_their_robot(name):
    cfg = load_config(CONFIG / name).resolved()
    sim = MujocoSim(cfg.robot)
    lo, hi = sim.position_limits.T
    assert cfg.conditions == 4 and len(cfg.heldout_targets) == 4
    for q in cfg.starts + cfg.targets + cfg.heldout_starts + cfg.heldout_targets:
        assert len(q) == sim.n_joints
        assert np.all(np.asarray(q) > lo) and np.all(np.asarray(q) < hi)
    # held-out targets are new targets, not training ones
    assert not {tuple(t) for t in cfg.heldout_targets} & {tuple(t) for t in cfg.targets}
    # the command line wins over the file
    assert load_config(CONFIG / name, iterations=2, samples=None).iterations == 2


def test_bad_gps_configs_are_refused(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("robot: arm2\nbogus: 1\n")
    with pytest.raises(ValueError, match="unknown keys \\['bogus'\\]"):
        load_config(f)
    f.write_text("robot: arm2\ntrain:\n  - {start: [0, 0]}\n")
    with pytest.raises(ValueError, match="list of \\{start"):
        load_config(f)
    f.write_text("robot: arm2\npolicy: {hidden: [0]}\n")
    with pytest.raises(ValueError, match="bad.yaml"):
        load_config(f)
    with pytest.raises(ValueError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match="3 starts but 2 targets"):
        GPSRunConfig(starts=[[0, 0]] * 3, targets=[[0, 0]] * 2).resolved()


def test_any_mjcf_gets_default_conditions():
    path = Path(__file__).resolve().parents[1] / "resources" / "arm3.xml"
    cfg = GPSRunConfig(robot=str(path), conditions=3).resolved()
    sim = MujocoSim(str(path))
    assert len(cfg.targets) == 3 and len(cfg.targets[0]) == sim.n_joints
    assert len(cfg.heldout_targets) == 4
    assert cfg.targets != cfg.heldout_targets
