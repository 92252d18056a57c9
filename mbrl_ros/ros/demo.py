"""The learn-and-control loop in simulation, with the real nodes composed in one process
(no launch framework): sim (lockstep), data_logger, model_fitter, excitation, controller.

Iteration 0 excites the robot and fits a first model; every further iteration resets the
robot, lets the controller (on the newest model) run one episode toward the target, and
refits on all data so far. The active planner is switched once, half way, by setting the
controller's ``active_planner`` parameter as a user would. Everything runs on a private
ROS domain with localhost-only discovery (see :mod:`mbrl_ros.ros.compose`).

Any robot: a shipped name uses its tuned defaults (``ROBOT_DEFAULTS``) and its shipped
parameter file ``config/<robot>.yaml`` -- the per-robot values every launched node loads
(arm7: the focused excitation, the controller's effort rate limit, MPPI's refinement, the
live ensemble's size), under the demo's own settings (:func:`robot_parameters`); an MJCF
path gets generic ones (100 Hz, horizon 30, 8 s of excitation, 3 s episodes) and, without
an explicit target, :func:`default_target` (a reachable configuration away from home).

The run ends with a report whatever ends it: metrics.json and the plots are written for
the iterations done, with ``error`` saying why a run stopped early. A slow planner is not a
stall: the lockstep simulation is declared stalled only when its time has not advanced for
``stall_seconds`` of wall time.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rclpy import logging as rclpy_logging
from rclpy.logging import LoggingSeverity
from rclpy.parameter import Parameter

from mbrl_ros.core import store
from mbrl_ros.core.costs.task import CostSettings
from mbrl_ros.core.models.evaluate import rollouts
from mbrl_ros.core.plots import plot_rollouts
from mbrl_ros.core.report import (IterationMetrics, episode_cost, plot_joint_trajectories,
                                  plot_learning_curve)
from mbrl_ros.core.robot import RobotDescription
from mbrl_ros.ros.compose import InProcessSystem
from mbrl_ros.ros.controller import Controller
from mbrl_ros.ros.data_logger import DataLogger
from mbrl_ros.ros.excitation_node import ExcitationNode
from mbrl_ros.ros.model_fitter import ModelFitter
from mbrl_ros.ros.sim_node import SimNode

# Task, rates and loop timing per shipped robot (config/<robot>.yaml holds the same
# targets and rates): excitation seconds, episode seconds and planner settings.
ROBOT_DEFAULTS = {
    "arm2": {"target": (0.5, -0.5), "rate": 100.0, "horizon": 30, "excite": 8.0,
             "episode": 3.0, "planners": {}, "plan_rate": 50.0},
    # arm7: config/arm7.yaml's horizon (0.5 s); 20 s of excitation (2,000 transitions: in
    # process the GP on as many focused ones reaches the target, the ensemble is refitted
    # after every episode).
    # A plan per control step: behind config/arm7.yaml's 1000 N·m/s rate limit a learned
    # model's loop does not settle when a plan is held for two steps.
    # Figures for both: BENCHMARKS.md, "Figures moved out of docstrings (issue 13)".
    "arm7": {"target": (0.3, -0.5, 0.0, -2.0, 0.0, 1.6, 0.8), "rate": 100.0, "horizon": 50,
             "excite": 20.0, "episode": 3.0, "planners": {}, "plan_rate": 0.0},
    # swing-up: 4 s episodes (the swing takes ~3 s), a 2 s horizon, 3 iLQR iterations a replan
    "cartpole": {"target": (0.0, 0.0), "rate": 50.0, "horizon": 100, "excite": 4.0,
                 "episode": 4.0, "planners": {"ilqr": {"max_iterations": 3}},
                 "plan_rate": 50.0},
}
# A user's MJCF: the arms' rates and loop timing; the target from default_target().
GENERIC_DEFAULTS = {"rate": 100.0, "horizon": 30, "excite": 8.0, "episode": 3.0,
                    "planners": {}, "plan_rate": 50.0}


def default_target(robot: RobotDescription, offset: float = 0.5) -> np.ndarray:
    """A reachable target away from home for a robot without a tuned task.

    Each joint moves ``offset`` (rad, or a tenth of that in m for slide joints) from the
    home keyframe, alternating in sign so a chain folds rather than stretches, and is kept
    in the middle half of its range (continuous joints: unlimited).

    Returns:
        (n_joints,) joint positions [rad or m].
    """
    home = np.array(robot.home_positions)
    lo, hi = robot.position_limits[:, 0], robot.position_limits[:, 1]
    finite = np.isfinite(lo) & np.isfinite(hi)
    slide = finite & ((hi - lo) < 1.0) & ~robot.continuous    # heuristically metres
    step = np.where(slide, 0.1 * offset, offset)
    sign = np.where(np.arange(robot.n_joints) % 2 == 0, 1.0, -1.0)
    target = home + sign * step
    quarter = 0.25 * np.where(finite, hi - lo, 0.0)
    return np.where(finite, np.clip(target, lo + quarter, hi - quarter), target)


@dataclass
class DemoConfig:
    robot: str = "arm2"
    model: str = "gp"
    planner: str = "ilqr"
    switch_to: str = "mppi"
    iterations: int = 5                 # including the excitation iteration
    excite_seconds: float | None = None   # None: the robot's default
    episode_seconds: float | None = None  # None: the robot's default
    seed: int = 0
    target: tuple[float, ...] | None = None   # joint positions; None: the robot's default
    initial_noise: float = 0.1
    out: Path = Path("demo_out")
    progress: bool = True
    model_settings: dict = field(default_factory=dict)
    planner_settings: dict = field(default_factory=dict)   # on top of the robot's defaults
    # wall seconds without any simulated time passing before the run counts as stalled
    stall_seconds: float = 300.0
    # Replans per simulated second, as the controller node's default `plan_rate` (50 Hz):
    # the lockstep loop replans every round(rate / plan_rate) states and the policy's
    # plan (with its gains) acts in between, as it does on a real arm, where a solve
    # does not fit in one control period. 0: replan at every state. None: the robot's
    # default (ROBOT_DEFAULTS: 50, arm7 0).
    plan_rate: float | None = None


def robot_parameters(robot: str, share: str | None = None) -> dict[str, dict]:
    """The parameters ``config/<robot>.yaml`` gives each node, keyed by node name
    (``sim``, ``excitation``, ``controller``, ``model_fitter``), nested sections flattened
    to dotted names (``excitation.bandwidth``) as node parameters are named. ``{}`` for a
    robot without a shipped file (a user's MJCF).

    The demo composes its nodes on top of these, so a shipped robot runs with the values
    its launch uses (e.g. arm7's controller ``max_effort_rate``, a Panda's 1000 N·m/s, and
    its focused excitation).
    """
    import yaml

    from mbrl_ros.bringup import robot_label, share_dir
    path = Path(share or share_dir()) / "config" / f"{robot_label(robot)}.yaml"
    if robot not in ROBOT_DEFAULTS or not path.is_file():
        return {}

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            if isinstance(v, dict):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[prefix + k] = tuple(v) if isinstance(v, list) else v
        return out
    doc = yaml.safe_load(path.read_text()) or {}
    return {key.strip("/").split("/")[-1]: flat((section or {}).get("ros__parameters") or {})
            for key, section in doc.items()}


def replan_every(rate: float, plan_rate: float) -> int:
    """States between replans in lockstep for a node that replans at ``plan_rate`` [Hz]
    and controls at ``rate`` [Hz] (>= 1; ``plan_rate`` <= 0 or above ``rate``: every state)."""
    if plan_rate <= 0 or plan_rate >= rate:
        return 1
    return max(1, int(round(rate / plan_rate)))


def _wait(system: InProcessSystem, cond, timeout: float, what: str) -> None:
    if not system.spin_until(cond, timeout):
        raise RuntimeError(f"demo: timed out after {timeout:.0f} s waiting for {what}")


def run_demo(cfg: DemoConfig) -> dict:
    """Run the loop; returns the summary (also written to ``cfg.out/metrics.json``).

    The summary has ``error`` (None, or why the run stopped early); the report is written
    for the iterations done in either case.
    """
    from tqdm import tqdm

    robot = RobotDescription.load(cfg.robot)   # limits and forward kinematics for metrics
    defaults = ROBOT_DEFAULTS.get(cfg.robot, GENERIC_DEFAULTS)
    rate = defaults["rate"]
    if cfg.target is not None:
        target = np.asarray(cfg.target, dtype=float)
        if target.shape != (robot.n_joints,) or not np.all(np.isfinite(target)):
            raise ValueError(f"--target needs {robot.n_joints} finite joint positions "
                             f"({', '.join(robot.joint_names)}), got {list(cfg.target)}")
    elif "target" in defaults:
        target = np.asarray(defaults["target"], dtype=float)
    else:
        target = default_target(robot)
    cfg = dataclasses.replace(
        cfg, target=tuple(float(v) for v in target),
        excite_seconds=cfg.excite_seconds or defaults["excite"],
        episode_seconds=cfg.episode_seconds or defaults["episode"],
        planner_settings={p: {**defaults["planners"].get(p, {}),
                              **cfg.planner_settings.get(p, {})}
                          for p in {*defaults["planners"], *cfg.planner_settings}})
    out = Path(cfg.out)
    for sub in ("bags", "models"):           # the demo owns these: a re-run replaces them
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)
    cost_settings = CostSettings()
    t_wall, t_cpu = time.monotonic(), time.process_time()
    rows: list[IterationMetrics] = []
    episodes: list[tuple[str, object]] = []
    # The switch needs a control episode before and after it: iterations >= 3.
    switching = bool(cfg.switch_to) and cfg.switch_to != cfg.planner and cfg.iterations >= 3
    switch_iteration = max(2, (cfg.iterations + 1) // 2) if switching else None
    state = {"switch_time": None, "logger": None, "model_uri": None, "data": None}
    total = cfg.excite_seconds + (cfg.iterations - 1) * cfg.episode_seconds
    bar = tqdm(total=total, disable=not cfg.progress, desc=f"demo {robot.model_path.stem}/"
               f"{cfg.model}", dynamic_ncols=True, mininterval=0.5,
               bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} sim s [{elapsed}<{remaining}]"
                          "{postfix}")
    error = None
    try:
        _run(cfg, robot, rate, target, defaults, out, rows, episodes, switching,
             switch_iteration, state, bar, cost_settings)
    except (RuntimeError, KeyboardInterrupt) as e:
        error = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else str(e)
    finally:
        bar.close()
    return _report(cfg, robot, target, rate, out, rows, episodes, switch_iteration, state,
                   error, time.monotonic() - t_wall, time.process_time() - t_cpu)


def _run(cfg, robot, rate, target, defaults, out, rows, episodes, switching,
         switch_iteration, state, bar, cost_settings) -> None:
    """The loop itself; fills ``rows``, ``episodes`` and ``state`` as it goes, so that
    whatever stops it, the report covers what was done."""
    if cfg.progress:
        # One progress line on the terminal: the nodes' INFO lines would break it (the bar
        # shows the model version; warnings and errors still print). Set before the nodes
        # exist, so their start-up lines are quiet too.
        for name in ("sim", "data_logger", "model_fitter", "excitation", "controller"):
            rclpy_logging.set_logger_level(name, LoggingSeverity.WARN)
    shipped = robot_parameters(cfg.robot)
    with InProcessSystem() as system:
        sim = system.add(SimNode, {**shipped.get("sim", {}),
                                   "model": cfg.robot, "publish_rate": rate, "lockstep": True,
                                   "seed": cfg.seed, "initial_noise": cfg.initial_noise,
                                   "diagnostics_rate": 0.0})
        sim.pause()
        logger = system.add(DataLogger, {"output_dir": str(out / "bags"), "bag_name": "demo",
                                         "diagnostics_rate": 0.0})
        state["logger"] = logger
        # the robot file's settings of the fitted family only (a node takes no others)
        fitter = system.add(ModelFitter, {
            **{k: v for k, v in shipped.get("model_fitter", {}).items()
               if "." not in k or k.startswith(f"{cfg.model}.")},
            "model": cfg.model, "robot": cfg.robot, "store_dir": str(out / "models"),
            "live": True, "fit_every": 0, "min_transitions": 50, "seed": cfg.seed,
            "diagnostics_rate": 0.0, "reject_factor": 1e6,
            **{f"{cfg.model}.{k}": v for k, v in cfg.model_settings.items()}})
        excitation = system.add(ExcitationNode, {**shipped.get("excitation", {}),
                                                 "model": cfg.robot, "seed": cfg.seed,
                                                 "control_period": 1.0 / rate})
        plugins = [cfg.planner] + ([cfg.switch_to] if switching else [])
        controller = system.add(Controller, {
            **{k: v for k, v in shipped.get("controller", {}).items()
               if "." not in k or k.split(".")[0] in plugins},
            "robot": cfg.robot, "model": "", "planner_plugins": plugins,
            "active_planner": cfg.planner, "control_mode": "on_state", "plan_mode": "sync",
            "control_rate": rate, "horizon": defaults["horizon"],
            "replan_every": replan_every(rate, defaults["plan_rate"] if cfg.plan_rate is None
                                         else cfg.plan_rate),
            "target_joint_positions": tuple(float(v) for v in target),
            "diagnostics_rate": 0.0, "publish_plan": False,
            "state_timeout": 60.0,      # lockstep: time stands still while we fit
            **{f"{p}.{k}": v for p, ks in cfg.planner_settings.items() if p in plugins
               for k, v in ks.items()}})
        _wait(system, lambda: sim.state_pub.get_subscription_count() >= 3
              and sim.command_subscription_count() >= 1 and not logger.pending_topics()
              and logger.markers_written >= 1       # episode-0 marker recorded
              and sim.episode_pub.get_subscription_count() >= 2,   # logger and fitter
              20.0, "the nodes to connect")

        def run_sim_for(seconds: float) -> None:
            start = sim.sim_time()
            last = [start]

            def tick():
                t = sim.sim_time()
                if t != last[0]:
                    bar.update(t - last[0])
                    last[0] = t
            # Stalled = no simulated time for stall_seconds of wall time; a slow planner
            # on a busy machine only makes each lockstep step take longer.
            progress = [time.monotonic(), start]

            def done_or_stalled() -> bool:
                t = sim.sim_time()
                if t != progress[1]:
                    progress[:] = [time.monotonic(), t]
                return (t - start >= seconds - 1e-9
                        or time.monotonic() - progress[0] > cfg.stall_seconds)
            sim.resume()
            system.spin_until(done_or_stalled, timeout=float("inf"), tick=tick)
            sim.pause()
            system.spin_until(lambda: False, 0.1)     # let in-flight messages land
            if sim.sim_time() - start < seconds - 1e-9:
                raise RuntimeError(f"simulation stalled at {sim.sim_time():.2f} s: no "
                                   f"simulated time passed for {cfg.stall_seconds:g} s")

        def fit(label: str) -> None:
            future = fitter.request_fit(label)
            _wait(system, future.done, 600.0, f"the model fit ({label})")
            ok, message = future.result()
            if not ok and fitter.last_info is None:
                raise RuntimeError(f"demo: the first fit failed: {message}")
            version = fitter.last_info.version
            _wait(system, lambda: controller.mpc is not None
                  and controller.mpc.model_version == version, 60.0,
                  f"the controller to load model v{version}")
            bar.set_postfix_str(f"model v{version}", refresh=True)
            state["model_uri"] = fitter.last_info.uri
            state["data"] = fitter.dataset()

        # ---- iteration 0: excitation, first model
        run_sim_for(cfg.excite_seconds)
        system.executor.remove_node(excitation)
        system.nodes.remove(excitation)
        excitation.destroy_node()
        controller.trigger_configure()
        fit("excitation")
        controller.trigger_activate()
        rows.append(IterationMetrics(0, "excitation", sim.sim_time(),
                                     int(round(sim.sim_time() * rate)), None, None, None,
                                     fitter.last_good.metrics.get("rollout_rmse"),
                                     fitter.last_info.version, "excitation"))
        # ---- control iterations
        for it in range(1, cfg.iterations):
            if it == switch_iteration:
                result = controller.set_parameters([Parameter("active_planner",
                                                              value=cfg.switch_to)])[0]
                if not result.successful:
                    raise RuntimeError(f"planner switch refused: {result.reason}")
                state["switch_time"] = sim.sim_time()
            controller.reset_episode()
            sim.reset_episode(publish=False)
            t_start = sim.sim_time()
            run_sim_for(cfg.episode_seconds)
            data = fitter.dataset()           # episodes split at the sim's resets
            ep = data.episodes()[-1] if data is not None and len(data) else None
            planner = controller.mpc.active
            task_cost = final_distance = joint_error = None
            errors: list[float] = []
            if ep is not None and len(ep):
                task_cost = episode_cost(ep, target, robot.effort_limits, cost_settings,
                                         robot.continuous)
                q_final = ep.next_states[-1, :robot.n_joints]
                err = q_final - target
                unlimited = ~np.isfinite(robot.position_limits).all(axis=1)
                err[unlimited] = (err[unlimited] + np.pi) % (2 * np.pi) - np.pi  # revolutions
                errors = err.tolist()
                joint_error = float(np.max(np.abs(err)))
                final_distance = robot.ee_distance(q_final, target)
                episodes.append((f"it{it} {planner}", ep))
            fit(f"iteration {it}")
            rows.append(IterationMetrics(
                it, "control", sim.sim_time(), int(round(sim.sim_time() * rate)), task_cost,
                final_distance, joint_error, fitter.last_good.metrics.get("rollout_rmse"),
                fitter.last_info.version, planner,
                {"episode_start": t_start, "final_errors": errors,
                 "replans": controller.counters["replans"],
                 "replan_failures": controller.counters["replan_failures"]}))
        logger.finish(system.executor)


def _report(cfg, robot, target, rate, out, rows, episodes, switch_iteration, state, error,
            wall_seconds, cpu_seconds) -> dict:
    """metrics.json and the plots for the iterations done. ``cpu_seconds`` is the process's
    CPU time (all nodes run in it): unlike the wall time it hardly depends on other work
    running on the machine."""
    switch_time, data = state["switch_time"], state["data"]
    final_model = store.load(state["model_uri"]) if state["model_uri"] else None
    bags = [str(p) for p in state["logger"].last_bag_paths] if state["logger"] else []
    plots = {"learning_curve": str(plot_learning_curve(
        rows, out / "learning_curve.png", switch_time,
        f"{cfg.robot}: {cfg.model} model, {cfg.planner} -> {cfg.switch_to} "
        f"(switch at {switch_time:.1f} s)" if switch_time else f"{cfg.robot}: {cfg.model}"))}
    if episodes:
        plots["joint_trajectories"] = str(plot_joint_trajectories(
            episodes, target, robot.joint_names, out / "joint_trajectories.png",
            switch_label=f"it{switch_iteration}" if switch_iteration else None))
    if data is not None and len(data) and final_model is not None:
        held_out = data.subset(data.episode == data.episode.max())
        plots["prediction"] = str(plot_rollouts(
            rollouts(final_model, held_out, 20), final_model.spec.state_names,
            out / "prediction.png", title=f"{cfg.model} v{final_model_version(out, cfg)}: "
            "20-step open-loop predictions on the last episode"))
    summary = {"config": {k: (str(v) if isinstance(v, Path) else v)
                          for k, v in asdict(cfg).items()},
               "target": target.tolist(), "rate_hz": rate,
               "switch": {"iteration": switch_iteration, "sim_time": switch_time,
                          "from": cfg.planner, "to": cfg.switch_to},
               "iterations": [asdict(r) for r in rows], "bags": bags,
               "models": str(out / "models"), "plots": plots, "error": error,
               "wall_seconds": round(wall_seconds, 1), "cpu_seconds": round(cpu_seconds, 1)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    return summary


def final_model_version(out: Path, cfg: DemoConfig) -> int:
    return (store.versions(out / "models", cfg.model) or [0])[-1]


