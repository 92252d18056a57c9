"""``mbrl-ros``: record simulated data, turn bags into datasets, run the demo.

Every subcommand has ``--help``. Simulation commands run their nodes in this process on a
private ROS domain with localhost-only discovery (see :mod:`mbrl_ros.ros.compose`), so
they never publish onto a robot on the network. The ``gps`` subcommand is
:mod:`mbrl_ros.cli_gps`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from mbrl_ros.bringup import KINDS
from mbrl_ros.cli_gps import add_gps_parser
from mbrl_ros.core import registry


def _cmd_record(args: argparse.Namespace) -> int:
    from mbrl_ros.ros.compose import record

    t0 = time.monotonic()
    bags = record(args.robot, args.seconds, Path(args.out), rate=args.rate,
                  episodes=args.episodes, seed=args.seed, bag_name=args.name,
                  progress=not args.no_progress)
    print(f"recorded {args.seconds:g} s of simulated {args.robot} at {args.rate:g} Hz "
          f"in {time.monotonic() - t0:.1f} s wall: {', '.join(map(str, bags))}")
    return 0


def _robot_command_names(robot: str, required: bool) -> tuple[str, ...] | None:
    """The command joints of a shipped robot or MJCF (None if ``robot`` is empty, or is only a
    label and not ``required``). Raises ValueError naming the robot otherwise."""
    if not robot:
        return None
    from mbrl_ros.core.robot import RobotDescription, resolve_model

    try:
        resolve_model(robot)
    except ValueError:
        if required:
            raise
        print(f"note: robot {robot!r} is a label, not a shipped robot or MJCF: the command "
              "joints are inferred from the joint states", file=sys.stderr)
        return None
    return RobotDescription.load(robot).command_names


def _alignment_config(args: argparse.Namespace, robot_required: bool):
    from mbrl_ros.core.data.alignment import AlignmentConfig

    return AlignmentConfig(
        state_topic=args.state_topic, command_topic=args.command_topic,
        episode_topic=args.episode_topic,
        joint_names=tuple(args.joints.split(",")) if args.joints else None,
        command_names=_robot_command_names(args.robot, robot_required),
        max_command_age=args.max_command_age)


def _load_bags(paths: list[str], args: argparse.Namespace, robot_required: bool = True):
    """Bags -> (batch, alignment report, bag report). Every damaged place (file, byte offset,
    messages lost) and every alignment warning is printed to stderr as a warning.
    Raises BagError (nothing readable) or ValueError (commands that never fit the robot)."""
    from mbrl_ros.core.data.alignment import bag_to_dataset

    batch, report, bag_report = bag_to_dataset(paths, _alignment_config(args, robot_required))
    for warning in report.warnings:   # bag damage first, then clock steps
        print(f"warning: {warning}", file=sys.stderr)
    return batch, report, bag_report


def _cmd_dataset(args: argparse.Namespace) -> int:
    from mbrl_ros.core.data.bag import BagError

    try:
        batch, report, bag_report = _load_bags(args.bags, args)
    except BagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(batch) == 0:
        print(report.table())
        print(f"error: no transitions could be aligned from {', '.join(args.bags)}; topics "
              f"in the bag: {', '.join(sorted(bag_report.topics)) or 'none'}", file=sys.stderr)
        return 2
    batch.save(args.out)
    print(report.table())
    print(f"wrote {len(batch)} transitions (nx={batch.nx}, nu={batch.nu}) to {args.out}")
    return 0


def _cmd_reindex(args: argparse.Namespace) -> int:
    from mbrl_ros.core.data.bag import BagError, reindex_bag

    try:
        report = reindex_bag(args.bag)
    except (BagError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


def _cmd_fit(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from mbrl_ros.core import store
    from mbrl_ros.core.data.bag import BagError
    from mbrl_ros.core.fitting import FitSettings, fit_model, split_episodes
    from mbrl_ros.core.models.base import ModelError
    from mbrl_ros.core.models.evaluate import rollouts
    from mbrl_ros.core.plots import plot_rollouts

    try:
        batch, report, _ = _load_bags(args.bag, args, robot_required=False)
    except BagError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.table())
    settings = FitSettings(model=args.model, val_fraction=args.val_fraction,
                           horizon=args.horizon, seed=args.seed,
                           continuous_joints=tuple(args.continuous_joints or ()))
    model_settings = json.loads(args.model_settings) if args.model_settings else {}
    if args.model == "mujoco":
        if not args.robot:
            print("error: --model mujoco needs --robot (shipped name or MJCF path)",
                  file=sys.stderr)
            return 2
        model_settings.setdefault("mjcf", args.robot)
        if len(batch):
            model_settings.setdefault("control_period", float(np.median(batch.dt)))
    out = Path(args.out)
    bar = tqdm(total=1.0, desc=f"fit {args.model}", disable=args.no_progress,
               bar_format="{l_bar}{bar}| {n:.0%} [{elapsed}<{remaining}]")
    last = [0.0]

    def progress(fraction: float) -> None:
        fraction = min(max(fraction, 0.0), 1.0)
        if fraction > last[0]:
            bar.update(fraction - last[0])
            last[0] = fraction
    try:
        result = fit_model(batch, settings, model_settings, robot=args.robot,
                           progress=progress)
    except ModelError as e:
        bar.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    bar.update(1.0 - last[0])
    bar.close()
    info = store.publish(result.model, out, args.name or args.model, result.report)
    _, val = split_episodes(batch.subset(np.all(np.isfinite(batch.states), axis=1)),
                            settings.val_fraction)
    val = val if len(val) else batch
    png = plot_rollouts(rollouts(result.model, val, settings.horizon),
                        result.model.spec.state_names, out / "prediction.png",
                        title=f"{args.model}: {settings.horizon}-step open-loop predictions on "
                              "held-out episodes")
    m = result.report.metrics
    rep = {"model": args.model, "n_train": result.report.n_train,
           "n_val": result.report.n_val, "fit_seconds": round(result.report.fit_seconds, 4),
           "one_step_rmse": m["one_step_rmse"], "rollout_rmse": m["rollout_rmse"],
           "rollout_horizon": settings.horizon, "artifact": info.uri,
           "version": info.version, "checksum": info.checksum, "plot": str(png),
           "bags": [str(b) for b in args.bag], "dropped": report.dropped,
           "bags_complete": batch.meta["bags_complete"], "bag_damage": batch.meta["bag_damage"],
           "metrics": m, "notes": result.report.notes, "ranges": result.report.ranges}
    (out / "report.json").write_text(json.dumps(rep, indent=2))
    print(f"\n{args.model}: {rep['n_train']} training / {rep['n_val']} validation transitions,"
          f" fit in {rep['fit_seconds']:.2f} s\n  one-step RMSE {rep['one_step_rmse']:.4g}"
          f"   {settings.horizon}-step rollout RMSE {rep['rollout_rmse']:.4g}\n"
          f"  artifact {info.uri} (v{info.version})\n  report {out / 'report.json'}\n"
          f"  plot {png}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from mbrl_ros.ros.demo import DemoConfig, run_demo

    quick = args.quick
    try:
        target = tuple(float(v) for v in args.target.replace(",", " ").split()) \
            if args.target else None
        from mbrl_ros.sim.models import resolve_model
        resolve_model(args.robot)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = DemoConfig(robot=args.robot, model=args.model, planner=args.planner,
                     switch_to=args.switch_to, out=Path(args.out), seed=args.seed,
                     target=target, plan_rate=args.plan_rate,
                     iterations=args.iterations or (3 if quick else 6),
                     excite_seconds=5.0 if quick and args.robot != "cartpole" else None,
                     progress=not args.no_progress,
                     model_settings=json.loads(args.model_settings or "{}"))
    print(f"learn-and-control demo: {cfg.robot}, {cfg.model} model, planner {cfg.planner} "
          f"(switch to {cfg.switch_to} half way), {cfg.iterations} iterations -> {cfg.out}")
    try:
        summary = run_demo(cfg)
    except ValueError as e:              # e.g. a --target of the wrong length
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"\n{'it':>3} {'phase':<10} {'sim s':>7} {'steps':>6} {'task cost':>10} "
          f"{'final dist':>10} {'model RMSE':>10} {'v':>3}  planner")
    for r in summary["iterations"]:
        def f(v, fmt):
            return format(v, fmt) if v is not None else "-"
        print(f"{r['iteration']:>3} {r['phase']:<10} {r['interaction_seconds']:>7.2f} "
              f"{r['steps']:>6} {f(r['task_cost'], '10.4g'):>10} "
              f"{f(r['final_distance'], '10.4f'):>10} {f(r['model_error'], '10.4g'):>10} "
              f"{r['model_version']:>3}  {r['planner']}")
    if summary["iterations"]:
        last = summary["iterations"][-1]
        dist = last["final_distance"]
        dist = f"{dist:.4f} m" if dist is not None else "not measured (no episode data)"
        print(f"\nfinal end-effector distance to the target: {dist} after "
              f"{last['interaction_seconds']:.1f} s ({last['steps']} steps) of simulated "
              f"interaction; demo took {summary['wall_seconds']} s "
              f"({summary['cpu_seconds']} s of CPU)")
    print(f"report: {Path(args.out) / 'metrics.json'}")
    for name, path in summary["plots"].items():
        print(f"  {name}: {path}")
    print(f"  bags: {', '.join(summary['bags'])}\n  models: {summary['models']}")
    if summary["error"]:
        print(f"error: the demo stopped early: {summary['error']} (the report covers the "
              f"{len(summary['iterations'])} iterations done)", file=sys.stderr)
        return 1
    return 0


NODE_SETTINGS = {
    # node name -> (module, [(settings class in that module | 'model:<family>', prefix)])
    "sim": ("mbrl_ros.ros.sim_node", [("SimSettings", "")]),
    "data_logger": ("mbrl_ros.ros.data_logger", [("LoggerSettings", "")]),
    "excitation": ("mbrl_ros.ros.excitation_node", [("ExcitationNodeSettings", ""),
                                                    ("ExcitationSettings", "excitation.")]),
    # Only the chosen family's hyper-parameters are declared; every registered one is
    # listed here.
    "model_fitter": ("mbrl_ros.ros.model_fitter", [("FitterSettings", "")]
                     + [(f"model:{m}", f"{m}.") for m in registry.names("model")]),
    # Planner parameters live under '<id>.'; listed here for every registered planner
    # under its default id (= its type).
    "controller": ("mbrl_ros.ros.controller", [("ControllerSettings", ""),
                                               ("SafetySettings", ""), ("CostSettings", "")]
                   + [(f"planner:{p}", f"{p}.") for p in registry.names("planner")]),
    "gps_trainer": ("mbrl_ros.ros.gps_trainer", [("GPSTrainerSettings", "")]),
}


def node_parameter_specs(node: str):
    """[(prefix, ParamSpec)] of a node's parameters, from its settings schema."""
    import importlib

    from mbrl_ros.core.settings import specs
    if node not in NODE_SETTINGS:
        raise ValueError(f"unknown node {node!r}; nodes: {', '.join(NODE_SETTINGS)}")
    module_name, classes = NODE_SETTINGS[node]
    module = importlib.import_module(module_name)
    out = []
    for cls_name, prefix in classes:
        if cls_name.startswith(("model:", "planner:")):
            from mbrl_ros.core import registry
            kind, name = cls_name.split(":", 1)
            cls = registry.lookup(kind, name).Settings
        else:
            cls = getattr(module, cls_name)   # core settings are imported by the node module
        out += [(prefix, sp) for sp in specs(cls)]
    return out


def _yaml_value(v) -> str:
    import yaml
    v = list(v) if isinstance(v, tuple) else v
    return yaml.safe_dump(v, default_flow_style=True).strip().removesuffix("...").strip()


def parameters_markdown(node: str) -> str:
    """A Markdown table of a node's parameters, from its settings schema."""
    lines = ["| parameter | type | unit | default | range / choices | dynamic | description |",
             "|---|---|---|---|---|---|---|"]
    for prefix, sp in node_parameter_specs(node):
        rng = (f"[{sp.low if sp.low is not None else '-inf'}, "
               f"{sp.high if sp.high is not None else 'inf'}]"
               if sp.low is not None or sp.high is not None else "")
        if sp.choices:
            rng = ", ".join(map(str, sp.choices))
        lines.append(f"| `{prefix}{sp.name}` | {sp.kind} | {sp.unit} | "
                     f"`{_yaml_value(sp.default)}` | {rng} | {'yes' if sp.dynamic else ''} | "
                     f"{sp.doc} |")
    return "\n".join(lines)


def parameters_document() -> str:
    """docs/PARAMETERS.md: every node's parameters (generated; a test keeps it current)."""
    parts = ["# mbrl_ros parameters", "",
             "Generated from the settings schema by `mbrl-ros params all --markdown`; "
             "do not edit by hand. `mbrl-ros params NODE` prints the same as a documented "
             "`--params-file` YAML. Dynamic parameters can be changed while the node runs "
             "(`ros2 param set`); the others are read at start-up. The model families and "
             "planners are the plugins `mbrl_ros/core/registry.py` lists (`PLUGINS`). What a "
             "one-line description leaves out is in [CONTROLLER.md](CONTROLLER.md), "
             "[MODELS.md](MODELS.md) and [PLANNERS.md](PLANNERS.md).", ""]
    for node in NODE_SETTINGS:
        parts += [f"## {node}", "", parameters_markdown(node), ""]
    return "\n".join(parts)


def node_key(node: str) -> str:
    """The section key of a node in a parameter file: matches it in any namespace."""
    return f"/**/{node}"


def _cmd_bringup(args: argparse.Namespace) -> int:
    from mbrl_ros import bringup
    if args.show_args:
        print(bringup.arguments_help(args.kind))
        return 0
    from mbrl_ros.ros.bringup_runner import run
    return run(args.kind, args.arguments, dry_run=args.dry_run)


def _cmd_params(args: argparse.Namespace) -> int:
    if args.node == "all":
        if not args.markdown:
            raise ValueError("'params all' needs --markdown (YAML files are per node)")
        print(parameters_document())
        return 0
    entries = node_parameter_specs(args.node)
    if args.markdown:
        print(parameters_markdown(args.node))
        return 0
    print(f"# Parameters of the {args.node} node (generated by `mbrl-ros params {args.node}`).")
    # '/**/' also matches the node under a namespace (a plain '<node>:' would not).
    print(f"{node_key(args.node)}:\n  ros__parameters:")
    current = None
    for prefix, sp in entries:
        indent = "    "
        if prefix:   # 'excitation.' -> a nested map, as ROS 2 parameter files write it
            if prefix != current:
                print(f"    {prefix.rstrip('.')}:")
                current = prefix
            indent = "      "
        print(f"{indent}# {sp.describe().split(': ', 1)[0]}")
        print(f"{indent}#   {sp.doc}")
        print(f"{indent}{sp.name}: {_yaml_value(sp.default)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mbrl-ros", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    r = sub.add_parser("record", help="simulate a robot under excitation and record a bag",
                       description="Simulate ROBOT in lockstep under the excitation "
                                   "controller and record /joint_states and the effort "
                                   "commands to a rosbag2 (MCAP) bag under OUT.")
    r.add_argument("--robot", default="arm2", help="arm2 | arm7 | cartpole | MJCF path "
                                                   "(default: arm2)")
    r.add_argument("--seconds", type=float, default=5.0, help="simulated seconds (default 5)")
    r.add_argument("--out", required=True, help="directory to write the bag under")
    r.add_argument("--rate", type=float, default=100.0, help="control rate in Hz (default 100)")
    r.add_argument("--episodes", type=int, default=1, help="episodes to split the time into")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--name", default="excitation", help="bag name prefix")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_record)

    d = sub.add_parser("dataset", help="turn bags into an aligned (x, u, x') dataset",
                       description="Align each effort command with the joint state it acted "
                                   "on and the next state (zero-order hold) and save .npz. "
                                   "Reads rosbag2 bags (MCAP or sqlite3) from any writer, bare "
                                   ".mcap files, and folders of bags; damaged bags are read up "
                                   "to the damage.")
    d.add_argument("bags", nargs="+", help="bag directories or .mcap files")
    d.add_argument("--out", required=True, help="output .npz file")
    d.add_argument("--state-topic", default="/joint_states")
    d.add_argument("--command-topic", default="/effort_controller/commands")
    d.add_argument("--episode-topic", default="/data_logger/episode")
    d.add_argument("--joints", default="", help="comma-separated state joint order "
                                                "(default: order of the first joint state)")
    d.add_argument("--max-command-age", type=float, default=0.5,
                   help="drop transitions whose held command is older (s, default 0.5)")
    d.add_argument("--robot", default="", help="arm2 | arm7 | cartpole | MJCF path: the commands "
                                               "must have one value per command joint of this "
                                               "robot (default: inferred from the joint states)")
    d.set_defaults(func=_cmd_dataset)

    ri = sub.add_parser("reindex", help="make a bag from a killed recorder readable again",
                        description="Like `ros2 bag reindex`: rewrite every readable message of "
                                    "BAG's MCAP file(s) into a complete MCAP with a rosbag2 "
                                    "metadata.yaml, so ros2 bag and rosbags open it. The "
                                    "original files are kept as <name>.orig.")
    ri.add_argument("bag", help="bag directory (or its .mcap file)")
    ri.set_defaults(func=_cmd_reindex)

    f = sub.add_parser("fit", help="fit a dynamics model on bags, validate it, save it",
                       description="Turn the bags into a dataset, fit MODEL on all but the "
                                   "held-out episodes, report one-step and open-loop rollout "
                                   "errors on them, and save a versioned artifact, "
                                   "OUT/report.json and OUT/prediction.png.")
    f.add_argument("--bag", action="append", required=True,
                   help="bag directory or .mcap (repeat for several)")
    f.add_argument("--model", required=True,
                   choices=list(registry.names("model")))
    f.add_argument("--out", required=True, help="output directory (artifact store + report)")
    f.add_argument("--name", default="", help="artifact name (default: the model family)")
    f.add_argument("--horizon", type=int, default=20, help="rollout steps (default 20)")
    f.add_argument("--continuous-joints", nargs="+", metavar="JOINT",
                   help="joints whose position wraps (URDF 'continuous'); default: the "
                        "robot's MJCF (--robot) or the bags' metadata")
    f.add_argument("--val-fraction", type=float, default=0.2,
                   help="fraction of episodes held out (default 0.2)")
    f.add_argument("--robot", default="", help="robot label; the MJCF for --model mujoco")
    f.add_argument("--model-settings", default="",
                   help='model hyper-parameters as JSON, e.g. \'{"epochs": 50}\'')
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--no-progress", action="store_true")
    f.add_argument("--state-topic", default="/joint_states")
    f.add_argument("--command-topic", default="/effort_controller/commands")
    f.add_argument("--episode-topic", default="/data_logger/episode")
    f.add_argument("--joints", default="")
    f.add_argument("--max-command-age", type=float, default=0.5)
    f.set_defaults(func=_cmd_fit)

    m = sub.add_parser("demo", help="run the learn-and-control loop in simulation",
                       description="Excite the simulated robot, fit a model, then alternate "
                                   "MPC episodes toward the target and refits; the planner is "
                                   "switched once half way. Writes metrics.json, plots, bags "
                                   "and model artifacts to OUT.")
    m.add_argument("--robot", default="arm2",
                   help="arm2 | arm7 | cartpole | path to your MJCF (default arm2)")
    m.add_argument("--target", default="",
                   help="target joint positions, e.g. '0.5 -0.5' (default: the robot's task; "
                        "for your MJCF a reachable configuration away from home)")
    m.add_argument("--model", default="gp",
                   choices=[x for x in registry.names("model") if x != "tvlg"])
    m.add_argument("--planner", default="ilqr", choices=list(registry.names("planner", "mpc")))
    m.add_argument("--switch-to", default="mppi",
                   choices=list(registry.names("planner", "mpc")) + [""],
                   help="planner switched to half way ('' for none)")
    m.add_argument("--iterations", type=int, default=0,
                   help="iterations including the excitation (default 6, --quick 3)")
    m.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    m.add_argument("--quick", action="store_true", help="short run (under two minutes)")
    m.add_argument("--plan-rate", type=float, default=None,
                   help="replans per simulated second, as the controller's plan_rate "
                        "(default: the robot's, 50; arm7 0; 0: every control step)")
    m.add_argument("--model-settings", default="", help="model hyper-parameters as JSON")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--no-progress", action="store_true")
    m.set_defaults(func=_cmd_demo)

    add_gps_parser(sub)

    pa = sub.add_parser("params", help="print a node's parameters as a documented YAML file",
                        description="Print every parameter of NODE with type, unit, range and "
                                    "default, as a --params-file YAML (or a Markdown table).")
    pa.add_argument("node", help=", ".join(NODE_SETTINGS) + ", or 'all' (with --markdown)")
    pa.add_argument("--markdown", action="store_true", help="a Markdown table instead")
    pa.set_defaults(func=_cmd_params)

    b = sub.add_parser("bringup", help="start the nodes of a launch file without ros2 launch",
                       description="Start the processes sim.launch.py, robot.launch.py or "
                                   "replay.launch.py start, with the same parameters, for "
                                   "installs without the ROS 2 launch framework: configures "
                                   "(and activates) the controller, forwards Ctrl-C, exits "
                                   "non-zero naming the node when one exits or fails to "
                                   "configure.")
    b.add_argument("kind", choices=list(KINDS), help="which launch file's processes")
    b.add_argument("arguments", nargs="*", metavar="name:=value",
                   help="launch arguments, as for ros2 launch (see --show-args)")
    b.add_argument("--show-args", action="store_true", help="list the arguments and exit")
    b.add_argument("--dry-run", action="store_true",
                   help="print the command lines and parameters, start nothing")
    b.set_defaults(func=_cmd_bringup)
    return p


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM (kill, a process manager) ends a run like Ctrl-C: bags closed, report written.
    import signal
    signal.signal(signal.SIGTERM, _interrupt)
    from mbrl_ros.core.threads import limit_threads
    limit_threads()
    try:
        code = args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyError as e:               # registry: unknown model/planner name
        print(f"error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:           # Ctrl-C: what was recorded is closed by then
        print("interrupted", file=sys.stderr)
        code = 130
    return code


if __name__ == "__main__":
    sys.exit(main())
