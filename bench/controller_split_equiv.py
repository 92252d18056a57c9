#!/usr/bin/env python3
"""Issue 13 controller split: does the in-process planner plan the same as before?

Closed loop on arm2 in lockstep (MujocoSim, 10 ms): MPCController built as the controller
node builds it in-process (layout, control period, effort_scale 0.8), exploring with the
model-free ``excitation`` planner for 40 steps, then the known model, a target and a
switch to ``ilqr``, and at step 80 effort_scale 0.6 -- 120 commands. Prints the SHA-256 of
the command array and the final joint positions as JSON. Runs against the old API
(effort_scale set + rebuild_planners) and the new one (effort_scale=, set_effort_scale),
so two trees can be compared: PYTHONPATH=<old tree> python bench/controller_split_equiv.py
"""
import hashlib, json, sys
import numpy as np
from mbrl_ros.core import registry
from mbrl_ros.core.control.mpc import MPCController
from mbrl_ros.core.costs.task import CostSettings
from mbrl_ros.core.models.mujoco_model import MujocoModel
from mbrl_ros.core.planners.base import RobotLayout
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.sim.env import MujocoSim

robot = RobotDescription.load("arm2")
def factory(pid, nx, nu, lo, hi, dt):
    cls = registry.lookup("planner", pid)
    return cls(cls.Settings(), nx, nu, lo, hi, dt)
layout = RobotLayout(robot.position_limits, np.asarray(robot.command_index), robot.effective_inertia())
new = "mjcf" in MPCController.__init__.__code__.co_varnames
kw = dict(continuous=robot.continuous, robot=layout, control_period=0.01)
if new:
    mpc = MPCController(factory, ["ilqr", "excitation"], "excitation", 20, robot.effort_limits,
                        robot.position_limits, CostSettings(), "", 0.0, effort_scale=0.8, **kw)
else:
    mpc = MPCController(factory, ["ilqr", "excitation"], "excitation", 20, robot.effort_limits,
                        robot.position_limits, CostSettings(), "", 0.0, **kw)
    mpc.effort_scale = 0.8
    mpc.rebuild_planners()
sim = MujocoSim("arm2", control_period=0.01)
us = []
for k in range(120):
    x, t = sim.state(), k * 0.01
    if k == 40:
        mpc.set_model(MujocoModel.from_sim("arm2", control_period=0.01), 1)
        mpc.set_target(np.array([0.6, -0.4]))
        mpc.select("ilqr")
    if k == 80:
        if new: mpc.set_effort_scale(0.6)
        else:
            mpc.effort_scale = 0.6; mpc.rebuild_planners()
    pol = mpc.replan(x, t)
    u = pol.action(x, t)
    us.append(u)
    sim.step(u)
us = np.array(us)
print(json.dumps({"new_api": new, "sha256": hashlib.sha256(us.tobytes()).hexdigest(),
                  "final_q": sim.positions().tolist(), "sum_abs_u": float(np.abs(us).sum())}))
