"""Guided policy search on the MuJoCo arm2: the global policy learns to reach a joint
target from several starts; the run loop (``mbrl-ros gps``) with (start, target)
conditions, a target-conditioned policy, metrics, plot, artifacts and resume."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mbrl_ros.core.policies.neural import PolicySettings, load_policy
from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings
from mbrl_ros.core.algorithms.gps_run import GPSRunConfig, run_gps
from mbrl_ros.core.algorithms.sim_env import MujocoEnv, reach_task
from mbrl_ros.sim.env import MujocoSim

# MDGPS runs of a few iterations: ~20-40 s each on an idle 2-core machine; a busy one
# (load 16 with five other engineers' runs) took 3-6 min.
pytestmark = pytest.mark.timeout(600)

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


def test_mujoco_env_checks_and_end_effector_distance():
    env = MujocoEnv("arm2", [[0.0, 0.0]], limit_margin=0.1, max_velocity=50.0)
    assert env.check(np.array([0.0, 0.0, 1.0, 1.0])) is None
    assert "diverging" in env.check(np.array([0.0, 0.0, 60.0, 0.0]))
    assert "non-finite" in env.check(np.array([np.nan, 0.0, 0.0, 0.0]))
    hi = env.sim.position_limits[1, 1]
    if np.isfinite(hi):
        assert "beyond its limit" in env.check(np.array([0.0, hi + 0.2, 0.0, 0.0]))
    # arm2's links: the end effector is |p(q)| from the base; a 0.1 rad turn of the
    # shoulder moves it by 2 |p| sin(0.05)
    r = np.linalg.norm(env.ee_position(np.zeros(2))[:2])
    assert env.ee_distance(np.zeros(2), np.array([0.1, 0.0])) == pytest.approx(
        2 * r * np.sin(0.05), rel=1e-6)
    np.testing.assert_allclose(env.gravity_torque(np.zeros(2)), 0.0, atol=1e-9)  # plane
    env7 = MujocoEnv("arm7", [[0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]])
    assert np.max(np.abs(env7.gravity_torque(env7.q0[0]))) > 1.0                 # gravity


def _quick(out, **kw):
    return GPSRunConfig(robot="arm2", out=out, quick=True, iterations=2, progress=False, **kw)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted quick arm2 run of 2 iterations (2 conditions with two targets)."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("gps_straight")
    return out, run_gps(_quick(out))


def _numbers(its):
    keys = ("iteration", "samples", "interaction_seconds", "local_cost", "policy_cost",
            "final_distance_m", "policy_final_distance_m", "policy_heldout_distance_m",
            "kl_bound", "kl_model", "step_mult")
    return [{k: r[k] for k in keys} for r in its]


def test_short_arm2_run_lowers_the_cost_and_reports(straight):
    out, rep = straight
    its = rep["iterations"]
    assert [r["iteration"] for r in its] == [1, 2]
    assert its[1]["local_cost"] < 0.5 * its[0]["local_cost"]
    assert max(its[1]["final_distance_m"]) < max(its[0]["final_distance_m"])
    assert its[1]["samples"] == 2 * 2 * 4 and its[1]["interaction_seconds"] == 2 * 2 * 4 * 40 * 0.05
    on_disk = json.loads((out / "metrics.json").read_text())
    for r in on_disk["iterations"]:
        for key in ("iteration", "interaction_seconds", "local_cost", "policy_cost",
                    "final_distance_m", "policy_final_distance_m",
                    "policy_heldout_distance_m", "kl_bound", "kl_model", "kl_samples",
                    "step_mult", "timings"):
            assert key in r, key
        assert set(r["timings"]) >= {"sampling", "dynamics", "policy_linearisation",
                                     "c_step", "s_step"}
        assert len(r["policy_heldout_distance_m"]) == 4
    assert on_disk["iterations"][0]["kl_samples"] is not None     # filled by iteration 2
    assert (out / "gps.png").stat().st_size > 10000
    # every iteration's policy is kept; latest is the best by held-out distance
    best = on_disk["best"]
    scores = [r["score_m"] for r in on_disk["iterations"]]
    assert best["score_m"] == min(scores)
    assert (out / "gps_policy" / "v0001").is_dir() and (out / "gps_policy" / "v0002").is_dir()
    policy, meta = load_policy(out / "gps_policy" / "latest")
    assert meta["version"] == best["version"]
    assert policy.n_task == 2 and policy.nx == 4 and policy.nu == 2
    assert meta["spec"].robot == "arm2"
    np.testing.assert_allclose(meta["task"]["targets"], [c["target"] for c in on_disk["train"]])


def test_a_crash_mid_iteration_resumes_at_the_next_iteration_with_its_samples(
        straight, tmp_path, monkeypatch):
    """Iteration 2 dies after its samples were drawn; --resume continues with iteration 2
    on those very samples (none redrawn) and ends where the uninterrupted run ended."""
    _, ref = straight
    out = tmp_path / "gps"
    calls = {"iteration": 0, "draw": 0}
    real_iteration, real_draw = MDGPS.iteration, MDGPS.draw_samples

    def dying_iteration(self, samples=None):
        calls["iteration"] += 1
        if calls["iteration"] == 2:
            raise KeyboardInterrupt("killed")
        return real_iteration(self, samples)

    monkeypatch.setattr(MDGPS, "iteration", dying_iteration)
    with pytest.raises(KeyboardInterrupt):
        run_gps(_quick(out))
    assert (out / "checkpoint" / "pending-0002" / "arrays.npz").exists()
    assert (out / "checkpoint" / "it0001" / "state.json").exists()
    assert not list(out.rglob("*.pkl"))               # no pickles anywhere
    assert len(json.loads((out / "metrics.json").read_text())["iterations"]) == 1
    monkeypatch.setattr(MDGPS, "iteration", real_iteration)

    def counting_draw(self):
        calls["draw"] += 1
        return real_draw(self)

    monkeypatch.setattr(MDGPS, "draw_samples", counting_draw)
    rep = run_gps(dataclasses.replace(_quick(out), resume=True))
    assert calls["draw"] == 0                         # iteration 2 used the saved samples
    assert not list((out / "checkpoint").glob("pending-*"))
    assert sorted(p.name for p in (out / "checkpoint").glob("it*")) == ["it0001", "it0002"]
    assert [r["iteration"] for r in rep["iterations"]] == [1, 2]
    got, want = _numbers(rep["iterations"]), _numbers(ref["iterations"])
    for g, w in zip(got, want):
        for k in w:
            np.testing.assert_allclose(g[k], w[k], rtol=1e-9, err_msg=k)
    # a finished run resumed again has nothing left to do
    assert len(run_gps(dataclasses.replace(_quick(out), resume=True))["iterations"]) == 2
    with pytest.raises(ValueError, match="another configuration"):
        run_gps(dataclasses.replace(_quick(out), resume=True, seed=1))
    with pytest.raises(ValueError, match="no checkpoint"):
        run_gps(dataclasses.replace(_quick(tmp_path / "none"), resume=True))


def test_cli_gps_takes_a_config_and_an_mjcf_and_refuses_bad_input(tmp_path, capsys):
    from mbrl_ros.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("robot: arm2\nbogus: 1\n")
    assert main(["gps", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "unknown keys" in capsys.readouterr().err
    assert main(["gps", "--robot", "no_such_robot", "--out", str(tmp_path / "o")]) == 2
    assert main(["gps", "--resume", "--out", str(tmp_path / "nothing"), "--no-progress"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    # an MJCF path (a user's 3-link arm): one quick iteration end to end
    arm3 = Path(__file__).resolve().parents[1] / "resources" / "arm3.xml"
    out = tmp_path / "arm3"
    assert main(["gps", "--robot", str(arm3), "--quick", "--iterations", "1", "--horizon", "20",
                 "--out", str(out), "--no-progress"]) == 0
    rep = json.loads((out / "metrics.json").read_text())
    assert len(rep["iterations"]) == 1 and len(rep["train"][0]["target"]) == 3
    policy, meta = load_policy(out / "gps_policy" / "latest")
    assert policy.n_task == 3 and meta["spec"].robot.endswith("arm3.xml")
