#!/usr/bin/env python3
"""Describing a robot: RobotDescription against the MujocoSim it replaced (issue 13).

Side by side in one run, interleaved, per robot:
1. configure: what the controller's on_configure derives from the MJCF -- before
   ``MujocoSim(robot)`` + ``robot_limits`` + ``min_effective_inertia``, now
   ``RobotDescription.load`` + ``min_effective_inertia`` + ``default_limits``;
2. fk: one end-effector position at a random configuration, as the controller's planned
   path marker computes it per state -- before ``set_state`` (mj_forward) + ``ee_position``,
   now ``ee_position(q)`` (mj_kinematics).
The outputs are checked equal before timing. Medians over ``--repeats``; ratio = before/now.

Usage: python bench/robot_description.py [--repeats 30] [--json PATH]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import write_json  # noqa: E402

import mujoco  # noqa: E402

from mbrl_ros.core.control.plausibility import default_limits  # noqa: E402
from mbrl_ros.core.robot import RobotDescription  # noqa: E402
from mbrl_ros.sim.env import MujocoSim  # noqa: E402

ROBOTS = ("arm2", "arm7", "cartpole")


def _sim_min_inertia(sim, samples=16, seed=0):
    """The sampling the controller did on a simulator before RobotDescription (the
    plausibility module's former sim-based helper, kept here as the 'before' path)."""
    lim = sim.position_limits
    lo = np.where(np.isfinite(lim[:, 0]), lim[:, 0], -np.pi)
    hi = np.where(np.isfinite(lim[:, 1]), lim[:, 1], np.pi)
    q0, v0 = sim.positions().copy(), sim.velocities().copy()
    rng = np.random.default_rng(seed)
    inertia = sim.effective_inertia()
    try:
        for _ in range(samples):
            sim.set_state(rng.uniform(lo, hi), np.zeros_like(v0))
            inertia = np.minimum(inertia, sim.effective_inertia())
    finally:
        sim.set_state(q0, v0)
    return inertia


def _sim_limits(sim):
    linear = np.array([sim.model.joint(j).type[0] == mujoco.mjtJoint.mjJNT_SLIDE
                       for j in sim.joint_names])
    return default_limits(linear, sim.effort_limits, _sim_min_inertia(sim))


def before_configure(name):
    sim = MujocoSim(name)
    return sim, _sim_limits(sim), _sim_min_inertia(sim)


def now_configure(name):
    robot = RobotDescription.load(name)
    inertia = robot.min_effective_inertia()
    return robot, default_limits(robot.linear, robot.effort_limits, inertia), inertia


def run(repeats: int) -> dict:
    out = {}
    for name in ROBOTS:
        sim, lim_b, in_b = before_configure(name)
        robot, lim_n, in_n = now_configure(name)
        np.testing.assert_allclose(in_b, in_n, rtol=1e-12)
        for a, b in zip(lim_b, lim_n):
            np.testing.assert_allclose(a, b, rtol=1e-12)
        cfg_b, cfg_n = [], []
        for _ in range(repeats):          # interleaved: load drifts hit both alike
            t = time.perf_counter()
            before_configure(name)
            cfg_b.append(time.perf_counter() - t)
            t = time.perf_counter()
            now_configure(name)
            cfg_n.append(time.perf_counter() - t)
        row = {"configure_before_ms": 1e3 * float(np.median(cfg_b)),
               "configure_now_ms": 1e3 * float(np.median(cfg_n))}
        row["configure_ratio"] = row["configure_before_ms"] / row["configure_now_ms"]
        if robot.has_ee:
            lim = robot.position_limits
            lo = np.where(np.isfinite(lim[:, 0]), lim[:, 0], -np.pi)
            hi = np.where(np.isfinite(lim[:, 1]), lim[:, 1], np.pi)
            qs = np.random.default_rng(0).uniform(lo, hi, (200, robot.n_joints))
            zeros = np.zeros(robot.n_joints)
            fk_b, fk_n = [], []
            for q in qs:
                t = time.perf_counter()
                sim.set_state(q, zeros)
                pb = sim.ee_position()
                fk_b.append(time.perf_counter() - t)
                t = time.perf_counter()
                pn = robot.ee_position(q)
                fk_n.append(time.perf_counter() - t)
                np.testing.assert_allclose(pb, pn, atol=1e-12)
            row["fk_before_us"] = 1e6 * float(np.median(fk_b))
            row["fk_now_us"] = 1e6 * float(np.median(fk_n))
            row["fk_ratio"] = row["fk_before_us"] / row["fk_now_us"]
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    load = open("/proc/loadavg").read().split()[:3]
    results = run(a.repeats)
    write_json(a.json, {"benchmark": "robot_description", "repeats": a.repeats,
                        "loadavg_before": load,
                        "loadavg_after": open("/proc/loadavg").read().split()[:3],
                        "results": results})


if __name__ == "__main__":
    main()
