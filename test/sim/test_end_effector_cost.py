"""End-effector cost: batched (torch/numpy) kinematics equal MuJoCo's site_xpos, derivatives
equal finite differences, batches equal the per-trajectory cost, and iLQR / CasADi MPC with
the MuJoCo model bring arm2's end effector to a reachable point."""
import time

import mujoco
import numpy as np
import pytest
import torch

from mbrl_ros.core.costs import Cost, QuadraticCost
from mbrl_ros.core.costs.end_effector import EndEffectorCost
from mbrl_ros.sim.env import MujocoSim

torch.set_num_threads(1)

# A chain with what the shipped arms lack: joint anchors off the body origin, a slide
# joint, rotated bodies and site, and a joint that is not a state joint (held at "home").
_TEST_MJCF = """
<mujoco model="fk_test">
  <worldbody>
    <body name="b0" pos="0.1 -0.2 0.3" quat="0.9 0.1 -0.3 0.2">
      <joint name="slide0" type="slide" axis="0.3 1 0.2" pos="0.05 0 0" range="-1 1"/>
      <geom type="sphere" size="0.05" mass="1"/>
      <body name="b1" pos="0.2 0.1 0" euler="0.3 -0.2 0.7">
        <joint name="hinge1" type="hinge" axis="1 0.5 -0.2" pos="0.03 -0.04 0.1"/>
        <joint name="hinge2" type="hinge" axis="0 0 1" pos="0 0.1 0"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.02" mass="1"/>
        <body name="b2" pos="0.3 0 0.05" quat="0.5 0.5 -0.5 0.5">
          <joint name="held" type="hinge" axis="0 1 0" pos="0.02 0 0"/>
          <geom type="capsule" fromto="0 0 0 0 0.2 0" size="0.02" mass="1"/>
          <body name="b3" pos="0 0.2 0">
            <joint name="hinge3" type="hinge" axis="1 1 1" pos="-0.01 0.02 0.03"/>
            <geom type="sphere" size="0.03" mass="0.5"/>
            <site name="tip" pos="0.05 0.07 -0.02" quat="0.7 0 0.7 0"/>
          </body>
        </body>
      </body>
    </body>
  </worldbody>
  <keyframe>
    <key name="home" qpos="0.1 0.2 -0.3 0.4 0.5"/>
  </keyframe>
</mujoco>
"""


def _random_q(cost, rng, n):
    return rng.uniform(-3.0, 3.0, (n, cost.nx // 2))


def _mujoco_site(mjcf_path, site, joints, q, home=None):
    m = mujoco.MjModel.from_xml_path(str(mjcf_path))
    d = mujoco.MjData(m)
    if home is not None:
        d.qpos[:] = home
    sid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_SITE, site)
    adr = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)] for j in joints]
    out = []
    for qi in q:
        d.qpos[adr] = qi
        mujoco.mj_kinematics(m, d)
        out.append(d.site_xpos[sid].copy())
    return np.array(out)


@pytest.mark.parametrize("robot", ["arm2", "arm7"])
def test_batched_kinematics_equal_mujoco(robot):
    cost = EndEffectorCost(robot, [0.1, 0.2, 0.3])
    sim = MujocoSim(robot)
    rng = np.random.default_rng(0)
    q = _random_q(cost, rng, 200)
    ref = _mujoco_site(sim.model_path, "ee", sim.joint_names, q)
    np.testing.assert_allclose(cost.positions(torch.tensor(q)).numpy(), ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cost.positions(q), ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.stack([cost.site_position(qi) for qi in q]), ref, atol=1e-12)
    # The simulator's own end-effector position agrees too.
    sim.set_state(q[0], np.zeros(len(q[0])))
    np.testing.assert_allclose(cost.positions(q[0]), sim.ee_position(), atol=1e-9)
    # Arbitrary batch shapes and float32 tensors.
    qt = torch.tensor(q[:12].reshape(3, 4, -1), dtype=torch.float32)
    p32 = cost.positions(qt)
    assert p32.shape == (3, 4, 3) and p32.dtype == torch.float32
    np.testing.assert_allclose(p32.numpy().reshape(-1, 3), ref[:12], atol=1e-5)


def test_batched_kinematics_with_anchors_slides_and_held_joints(tmp_path):
    path = tmp_path / "fk_test.xml"
    path.write_text(_TEST_MJCF)
    joints = ["slide0", "hinge1", "hinge2", "hinge3"]
    cost = EndEffectorCost(str(path), [0.0, 0.0, 0.0], site="tip", joints=joints)
    rng = np.random.default_rng(1)
    q = _random_q(cost, rng, 100)
    home = np.array([0.1, 0.2, -0.3, 0.4, 0.5])
    ref = _mujoco_site(path, "tip", joints, q, home)
    np.testing.assert_allclose(cost.positions(torch.tensor(q)).numpy(), ref, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cost.positions(q), ref, rtol=0, atol=1e-9)


def test_unknown_site_joint_or_bad_arguments_raise():
    with pytest.raises(ValueError):
        EndEffectorCost("arm2", [0, 0, 0], site="nope")
    with pytest.raises(ValueError):
        EndEffectorCost("arm2", [0, 0, 0], joints=["shoulder", "wrist"])
    with pytest.raises(ValueError):
        EndEffectorCost("arm2", [0, 0])
    with pytest.raises(ValueError):
        EndEffectorCost("arm2", [0, 0, 0], weight=-1.0)


def _fd(f, z, eps=1e-6):
    g = np.zeros_like(z)
    for i in range(z.size):
        dz = np.zeros_like(z)
        dz[i] = eps
        g[i] = (f(z + dz) - f(z - dz)) / (2 * eps)
    return g


@pytest.mark.parametrize("robot", ["arm2", "arm7"])
def test_derivatives_match_finite_differences(robot):
    cost = EndEffectorCost(robot, [0.2, -0.1, 0.5], weight=3.0, terminal_weight=7.0,
                           velocity_weight=0.4, terminal_velocity_weight=2.0)
    assert isinstance(cost, Cost)
    rng = np.random.default_rng(2)
    T, nx, nu = 4, cost.nx, cost.nu
    n = nx // 2
    xs = np.concatenate([_random_q(cost, rng, T), rng.standard_normal((T, n))], axis=1)
    us = rng.standard_normal((T, nu))
    lx, lu, lxx, luu, lux = cost.stage_derivatives(xs, us)
    assert lx.shape == (T, nx) and lxx.shape == (T, nx, nx) and luu.shape == (T, nu, nu)
    assert np.all(lu == 0) and np.all(luu == 0) and np.all(lux == 0)
    for t in range(T):
        np.testing.assert_allclose(lx[t], _fd(lambda x: cost.stage(x[None], us[:1])[0], xs[t]),
                                   atol=1e-6)
        # Gauss-Newton Hessian: w J'J with J the finite-difference Jacobian of p(q).
        J = np.stack([_fd(lambda q, k=k: cost.site_position(q)[k], xs[t, :n])
                      for k in range(3)])
        np.testing.assert_allclose(lxx[t, :n, :n], 3.0 * J.T @ J, atol=1e-6)
        np.testing.assert_allclose(lxx[t, n:, n:], 0.4 * np.eye(n), atol=1e-12)
        assert np.all(lxx[t, :n, n:] == 0)
    gf = cost.terminal_derivatives(xs[0])[0]
    np.testing.assert_allclose(gf, _fd(cost.terminal, xs[0]), atol=1e-6)
    # At the target the Gauss-Newton Hessian is the exact Hessian.
    at = cost.with_target(cost.site_position(xs[1, :n]))
    _, H_exact = at.terminal_derivatives(xs[1])
    H_fd = np.stack([_fd(lambda x, i=i: at.terminal_derivatives(x)[0][i], xs[1])
                     for i in range(nx)])
    np.testing.assert_allclose(H_exact, H_fd, atol=1e-5)


def test_batches_equal_per_trajectory_cost():
    cost = EndEffectorCost("arm7", [0.3, 0.1, 0.6], weight=2.0, terminal_weight=5.0,
                           velocity_weight=0.1)
    rng = np.random.default_rng(3)
    K, T, nx, nu = 5, 6, cost.nx, cost.nu
    xs = rng.standard_normal((K, T + 1, nx))
    us = rng.standard_normal((K, T, nu))
    ref = np.array([cost.total(xs[k], us[k]) for k in range(K)])
    np_batch = cost.stage_batch(xs[:, :-1], us) + cost.terminal_batch(xs[:, -1])
    np.testing.assert_allclose(np_batch, ref, rtol=1e-12)
    tx, tu = torch.tensor(xs), torch.tensor(us)
    t_batch = cost.stage_batch(tx[:, :-1], tu) + cost.terminal_batch(tx[:, -1])
    assert isinstance(t_batch, torch.Tensor) and t_batch.shape == (K,)
    np.testing.assert_allclose(t_batch.numpy(), ref, rtol=1e-12)
    # Sums with other terms work on torch batches too.
    total = cost + QuadraticCost.diagonal([0.0] * nx, [1.0] * nu)
    assert total.stage_batch(tx[:, :-1], tu).shape == (K,)


def test_with_target_returns_a_new_cost():
    cost = EndEffectorCost("arm2", [0.3, 0.0, 0.0])
    other = cost.with_target([0.0, 0.3, 0.0])
    x = np.zeros(4)        # home: ee at (0.55, 0, 0)
    assert cost.terminal(x) == pytest.approx(0.5 * 0.25 ** 2)
    assert other.terminal(x) == pytest.approx(0.5 * (0.55 ** 2 + 0.3 ** 2))
    np.testing.assert_array_equal(cost.target, [0.3, 0.0, 0.0])
    xt = torch.zeros(2, 4, dtype=torch.float64)
    np.testing.assert_allclose(other.terminal_batch(xt).numpy(), other.terminal(x))


def test_batched_kinematics_speed_reported():
    """7680 states (256 samples x 30 steps) of arm7 through torch; MuJoCo's per-state loop
    for comparison. Not a hard limit beyond 'well below the MuJoCo loop'."""
    cost = EndEffectorCost("arm7", [0.3, 0.1, 0.6])
    q = torch.tensor(np.random.default_rng(4).uniform(-2, 2, (7680, 7)))
    cost.positions(q)
    t_torch = min(_timed(lambda: cost.positions(q)) for _ in range(5))
    qn = q.numpy()
    t_mj = _timed(lambda: [cost.site_position(qi) for qi in qn])
    print(f"arm7 FK of 7680 states: torch {t_torch * 1e3:.1f} ms, MuJoCo loop "
          f"{t_mj * 1e3:.1f} ms")
    assert t_torch < t_mj


def _timed(f):
    tic = time.perf_counter()
    f()
    return time.perf_counter() - tic


def _reach_cost(target):
    ee = EndEffectorCost("arm2", target, weight=100.0, terminal_weight=1000.0,
                         velocity_weight=0.1, terminal_velocity_weight=10.0)
    return ee + QuadraticCost.diagonal([0.0] * 4, [1e-3] * 2)


@pytest.mark.parametrize("planner", ["ilqr", "casadi_mpc"])
def test_planners_bring_arm2_end_effector_to_a_reachable_point(planner):
    from mbrl_ros.core.models.mujoco_model import MujocoModel
    from mbrl_ros.core.planners.casadi_mpc import CasadiMPCPlanner, CasadiMPCSettings
    from mbrl_ros.core.planners.ilqr import ILQRPlanner, ILQRSettings

    dt, T = 0.02, 40
    sim = MujocoSim("arm2", control_period=dt)
    model = MujocoModel.from_sim("arm2", control_period=dt)
    target = np.array([0.15, 0.4, 0.0])      # |target| = 0.43 m, within reach 0.05..0.55
    cost = _reach_cost(target)
    lim = sim.effort_limits
    if planner == "ilqr":
        p = ILQRPlanner(ILQRSettings(horizon=T, max_iterations=30), 4, 2, -lim, lim, dt)
    else:
        p = CasadiMPCPlanner(CasadiMPCSettings(horizon=T, iterations=10), 4, 2, -lim, lim, dt,
                             position_limits=sim.position_limits)
    policy = p.optimize(sim.state(), sim.time, model, cost)
    for _ in range(T):
        x = sim.state()
        sim.step(policy.action(x, sim.time))
    assert np.linalg.norm(sim.ee_position() - target) < 0.02
