"""The GPS trainer node: guided policy search (MDGPS) through the other node processes.

    ros2 launch mbrl_ros gps.launch.py robot:=arm7 iterations:=3
    mbrl-ros bringup gps robot:=arm2 iterations:=1 out:=/tmp/gps   # without ros2 launch

Runs :func:`~mbrl_ros.core.algorithms.gps_run.run_gps` (the ``mbrl-ros gps`` loop:
checkpoints, ``resume``, the best policy as ``latest``, ``metrics.json`` and ``gps.png`` in
``out``) with a :class:`~mbrl_ros.ros.gps_remote.RemoteSampler`: every sample, the policy
evaluation on the training conditions and the held-out evaluation run on the simulator,
controller and data logger nodes of the launch, reached only through ROS topics, services
and parameters (the controller's ``set_parameters`` as ``ros2 param set``; the simulator's
``~/set_state``, ``~/resume`` and ``pause_after``; the data logger's ``~/mark_episode``).
``reset: move`` reaches each sample's start with a move of the controller instead of the
simulator's ``set_state``, as a real arm must.

This node is the launch's job: it exits when the run is done (0), on an error (1, one
line naming the cause), on an invalid configuration (2), or on SIGINT/SIGTERM (0: the last
finished iteration's checkpoint is kept, ``resume:=true`` continues). Under ``ros2 launch``
and ``mbrl-ros bringup`` its exit ends the launch.
"""
from __future__ import annotations

import dataclasses
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from mbrl_ros.core.settings import SettingsError, setting
from mbrl_ros.core.threads import limit_threads
from mbrl_ros.ros.params import declare_settings


@dataclass(frozen=True)
class GPSTrainerSettings:
    robot: str = setting("", "shipped robot name or MJCF path, the simulator's model (empty: "
                         "the config's robot)")
    config: str = setting("", "GPS run configuration file (gps_*.yaml; empty: the shipped "
                          "config/gps_<robot>.yaml, arm2's without a robot)")
    out: str = setting("gps_out", "output directory: metrics.json, gps.png, checkpoint/, "
                       "the policy artifacts; the samples' controllers under out/nodes/")
    resume: bool = setting(False, "continue the run in out from its last checkpoint")
    iterations: int = setting(0, "MDGPS iterations (0: the config's)", low=0, high=10000)
    conditions: int = setting(0, "training conditions used (0: the config's)", low=0,
                              high=1000)
    samples: int = setting(0, "samples per condition and iteration (0: the config's)",
                           low=0, high=1000)
    horizon: int = setting(0, "steps per sample (0: the config's)", low=0, high=100000)
    reset: str = setting("sim", "how a sample reaches its start: sim (the simulator's "
                         "set_state) or move (the controller's move_planner drives the arm "
                         "there)", choices=("sim", "move"))
    timing: str = setting("lockstep", "how samples are cut: lockstep (the simulator's "
                          "pause_after and resume) or realtime (from the running arm's state "
                          "stream: a physical arm; needs reset move)",
                          choices=("lockstep", "realtime"))
    settle_time: float = setting(0.5, "realtime: seconds the arm stays settled at a sample's "
                                 "start", unit="s", low=0.0, high=60.0)
    controller_node: str = setting("controller", "the controller node (relative name)")
    sim_node: str = setting("sim", "the lockstep simulator node (relative name; unused with "
                            "timing realtime)")
    logger_node: str = setting("", "the data logger node recording the samples (empty: none)")
    bag_dir: str = setting("", "the data logger's output_dir: gps_episodes.json (which bag "
                           "episode is which sample) is written there")
    state_topic: str = setting("joint_states", "joint state topic (relative)")
    command_topic: str = setting("effort_controller/commands", "effort command topic "
                                 "(relative)")
    move_planner: str = setting("ilqr", "planner that moves the arm to a sample's start "
                                "(reset: move)")
    settle_tolerance: float = setting(0.01, "reset move: largest joint position error at "
                                      "the start", unit="rad|m", low=1e-6, high=1.0)
    settle_velocity: float = setting(0.05, "reset move: largest joint speed at the start",
                                     unit="rad/s|m/s", low=1e-6, high=10.0)
    move_chunk: int = setting(10, "reset move: steps between settle checks", low=1,
                              high=10000)
    move_steps: int = setting(2000, "reset move: steps before the move is declared failed",
                              low=1, high=10**7)
    step_timeout: float = setting(30.0, "wall seconds without a new state before a sample "
                                  "is declared stalled", unit="s", low=0.1, high=3600.0)
    service_timeout: float = setting(60.0, "wall seconds for a node to offer and answer a "
                                     "service", unit="s", low=0.1, high=3600.0)
    progress: bool = setting(True, "progress bar per iteration on stderr")


def _shipped_config(robot: str) -> Path:
    from mbrl_ros.bringup import share_dir
    path = Path(share_dir()) / "config" / f"gps_{Path(robot).stem}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no shipped GPS configuration for robot {robot!r} ({path}): "
                                "set the config parameter")
    return path


class GPSTrainer(Node):
    """Holds the trainer's parameters and runs the loop (:meth:`run`); the sampler spins
    this node itself while it waits for the other nodes."""

    def __init__(self, **kwargs):
        super().__init__("gps_trainer", **kwargs)
        self.settings = declare_settings(self, GPSTrainerSettings)
        if self.settings.timing == "realtime" and self.settings.reset != "move":
            raise ValueError("timing realtime needs reset move: a running arm reaches a "
                             "sample's start with the controller (no set_state)")
        from mbrl_ros.core.algorithms.gps_run import load_config
        s = self.settings
        path = Path(s.config).expanduser() if s.config else _shipped_config(s.robot or "arm2")
        self.cfg = load_config(path, robot=s.robot or None, iterations=s.iterations or None,
                               conditions=s.conditions or None, samples=s.samples or None,
                               horizon=s.horizon or None)
        self.cfg = dataclasses.replace(self.cfg, out=Path(s.out).expanduser(),
                                       resume=s.resume, progress=s.progress).resolved()
        self.config_path = path

    def run(self, executor) -> dict:
        from mbrl_ros.core.algorithms.gps_run import run_gps
        from mbrl_ros.ros.gps_realtime import RealtimeSampler
        from mbrl_ros.ros.gps_remote import RemoteSampler

        s, cfg = self.settings, self.cfg
        self.get_logger().info(
            f"MDGPS on {cfg.robot} through the nodes ({s.timing}, {s.reset} reset): "
            f"{cfg.conditions} "
            f"conditions x {cfg.samples} samples x {cfg.horizon} steps, "
            f"{len(cfg.heldout_targets)} held-out, {cfg.iterations} iterations "
            f"({self.config_path}) -> {cfg.out}" + (" (resuming)" if cfg.resume else ""))
        made: list[RemoteSampler] = []

        def factory(task):
            cls, extra = ((RealtimeSampler, {"settle_time": s.settle_time})
                          if s.timing == "realtime" else (RemoteSampler, {}))
            made.append(cls(
                task.env, task.targets, Path(cfg.out) / "nodes", self, executor, **extra,
                controller=s.controller_node, sim=s.sim_node, logger=s.logger_node,
                command_topic=s.command_topic, state_topic=s.state_topic, reset=s.reset,
                move_planner=s.move_planner, settle_tolerance=s.settle_tolerance,
                settle_velocity=s.settle_velocity, move_chunk=s.move_chunk,
                move_steps=s.move_steps, bag_dir=s.bag_dir or None,
                step_timeout=s.step_timeout, service_timeout=s.service_timeout))
            return made[-1]
        try:
            report = run_gps(cfg, sampler_factory=factory)
        finally:
            for sampler in made:
                sampler.close()
        for r in report["iterations"]:
            local = max(r["final_distance_m"]) * 100
            held = r.get("policy_heldout_distance_m")
            self.get_logger().info(
                f"iteration {r['iteration']}: local {local:.2f} cm, policy "
                + (f"{max(r['policy_final_distance_m']) * 100:.2f} cm"
                   if r.get("policy_final_distance_m") else "-")
                + (f", held-out {max(held) * 100:.2f} cm" if held else "")
                + f", sampling {r['timings']['sampling']:.1f} s")
        self.get_logger().info(f"done: {Path(cfg.out) / 'metrics.json'}")
        return report


def main(args=None) -> None:
    """The node's process: run the loop to its end, then exit (see the module docstring)."""
    argv = sys.argv if args is None else args
    limit_threads()
    rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    stopping = []

    def _on_signal(signum, frame):
        if not stopping:            # the first one interrupts the loop, later ones wait
            stopping.append(signum)
            raise KeyboardInterrupt
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    code, node = 0, None
    try:
        node = GPSTrainer()
    except KeyboardInterrupt:
        pass
    except (SettingsError, ValueError, TypeError, FileNotFoundError) as e:
        print(f"[ERROR] gps_trainer: invalid configuration: {e}", file=sys.stderr, flush=True)
        code = 2
    if node is not None:
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            node.run(executor)
        except KeyboardInterrupt:
            print("[INFO] gps_trainer: stopped; resume:=true continues from the last "
                  "checkpoint", file=sys.stderr, flush=True)
        except Exception as e:          # noqa: BLE001 -- one line naming the cause, exit 1
            print(f"[ERROR] gps_trainer: {type(e).__name__}: {e}", file=sys.stderr,
                  flush=True)
            code = 1
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rclpy.try_shutdown()
    sys.exit(code)


if __name__ == "__main__":
    main()
