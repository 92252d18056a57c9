"""Guided policy search on the MuJoCo arm2: the global policy learns to reach a joint
target from several starts; ``mbrl-ros gps`` writes its report, plot and artifact."""
import json

import numpy as np
import torch

from mbrl_ros.core.algorithms.global_policy import PolicySettings, load_policy
from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings
from mbrl_ros.core.algorithms.sim_env import MujocoEnv, reach_task
from mbrl_ros.sim.env import MujocoSim

THRESHOLD = 0.05            # rad, max over joints of the final joint error


def _rollout(policy, robot, q0, steps, dt=0.05):
    sim = MujocoSim(robot, control_period=dt)
    sim.reset(positions=q0, velocities=np.zeros_like(q0))
    for _ in range(steps):
        u = policy.action(sim.state(), sim.time)
        sim.step(np.clip(u, -sim.effort_limits, sim.effort_limits))
    return sim.state()


def test_gps_reaches_the_target_on_arm2_where_doing_nothing_fails():
    torch.set_num_threads(1)
    task = reach_task("arm2", conditions=3, horizon=40, seed=0)
    gps = MDGPS(task.env, task.cost, GPSSettings(horizon=40, samples=5, seed=0),
                policy=PolicySettings(iterations=250),
                initial_controllers=task.initial_controllers,
                distance=task.final_joint_error)
    recs = gps.run(3)
    do_nothing = [task.final_joint_error(np.r_[q, 0.0, 0.0]) for q in task.env.q0]
    assert min(do_nothing) > 10 * THRESHOLD
    assert max(recs[-1].policy_final_distance) < THRESHOLD, recs[-1]
    # the sampled controllers got much better too
    assert np.mean(recs[-1].cost_lg) < 0.2 * np.mean(recs[0].cost_lg)
    # Independent check in a fresh simulator, longer than the training horizon: the
    # global policy gets there and stays.
    for q0 in task.env.q0:
        x = _rollout(gps.policy, "arm2", q0, 60)
        assert np.max(np.abs(x[:2] - task.target_q)) < THRESHOLD
        assert np.max(np.abs(x[2:])) < 0.1                       # at rest
    assert task.env.spec.state_names == ("shoulder/position", "elbow/position",
                                         "shoulder/velocity", "elbow/velocity")


def test_mujoco_env_adapter_conditions_and_clamping():
    env = MujocoEnv("arm2", [[0.0, 0.0], [0.5, -0.5]])
    assert (env.nx, env.nu, env.n_conditions) == (4, 2, 2)
    np.testing.assert_allclose(env.reset(1), [0.5, -0.5, 0.0, 0.0])
    x = env.step(np.array([100.0, 0.0]))           # clamped to the 3 N·m limit
    env2 = MujocoEnv("arm2", [[0.5, -0.5]])
    env2.reset(0)
    np.testing.assert_allclose(x, env2.step(np.array([3.0, 0.0])))


def test_cli_gps_writes_report_plot_and_artifact(tmp_path):
    from mbrl_ros.cli import main

    out = tmp_path / "gps"
    assert main(["gps", "--quick", "--iterations", "2", "--out", str(out),
                 "--no-progress"]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert len(rep["history"]) == 2
    h = rep["history"][-1]
    for key in ("samples", "interaction_seconds", "cost_lg", "cost_policy", "epsilon", "eta",
                "kl", "policy_final_distance", "timings"):
        assert key in h
    assert h["samples"] == 2 * 2 * 4 and h["interaction_seconds"] == 2 * 2 * 4 * 40 * 0.05
    assert (out / "gps.png").stat().st_size > 10000
    assert rep["policy_action_seconds"] < 1e-3
    policy, meta = load_policy(out / "gps_policy" / "latest")
    assert policy.nx == 4 and policy.nu == 2
    assert meta["spec"].robot == "arm2" and meta["version"] == 1
    np.testing.assert_allclose(meta["task"]["x_target"][:2], rep["target_positions"])
