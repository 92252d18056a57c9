"""``mbrl-ros gps``: guided policy search in simulation (the subcommand's arguments, the
run, the printed report). The experiment itself is
:func:`mbrl_ros.core.algorithms.gps_run.run_gps`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_gps_parser", "cmd_gps", "print_report"]


def add_gps_parser(sub) -> argparse.ArgumentParser:
    """Add the ``gps`` subcommand to ``sub`` (the CLI's subparsers)."""
    g = sub.add_parser("gps", help="train a global policy by guided policy search in simulation",
                       description="Mirror-descent guided policy search: local linear-Gaussian "
                                   "controllers from fitted TVLG dynamics, one per (start, "
                                   "target) condition, distilled into one target-conditioned "
                                   "neural-network policy. Writes OUT/metrics.json, OUT/gps.png, "
                                   "OUT/checkpoint/ and the policy artifacts OUT/NAME/vNNNN "
                                   "(latest = best on the held-out targets; for the gps_policy "
                                   "planner).")
    g.add_argument("--config", default="", help="YAML run configuration (config/gps_arm2.yaml, "
                                                "config/gps_arm7.yaml)")
    g.add_argument("--robot", default=None,
                   help="shipped robot (arm2, arm7: default conditions) or an MJCF path "
                        "(conditions drawn around its home keyframe); default arm2 or the "
                        "config's")
    g.add_argument("--iterations", type=int, default=0,
                   help="GPS iterations (default 8, --quick 3, or the config's)")
    g.add_argument("--out", default="gps_out", help="output directory (default gps_out)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in OUT from its last checkpoint")
    g.add_argument("--quick", action="store_true",
                   help="small run: 2 conditions, 4 samples, shorter S-steps")
    g.add_argument("--conditions", type=int, default=0,
                   help="training conditions used (default all, --quick 2)")
    g.add_argument("--samples", type=int, default=0,
                   help="samples per condition and iteration (default 5, --quick 4)")
    g.add_argument("--horizon", type=int, default=None,
                   help="steps per trajectory (default 40 or the config's)")
    g.add_argument("--name", default=None, help="artifact name (default gps_policy)")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--through-nodes", action="store_true",
                   help="draw every sample through the ROS nodes: the lockstep simulator "
                        "node and the controller node executing each condition's "
                        "controller (lg_controller planner) and, after each S-step, the "
                        "global policy (gps_policy planner), recorded by the data logger "
                        "(OUT/nodes/bags-*/); same results as in-process")
    g.add_argument("--no-progress", action="store_true")
    g.set_defaults(func=cmd_gps)
    return g


def cmd_gps(args: argparse.Namespace) -> int:
    """``mbrl-ros gps``: build the run configuration, run it, print its report."""
    import dataclasses

    from mbrl_ros.core.algorithms.gps_run import GPSRunConfig, load_config, run_gps

    over = {"robot": args.robot, "iterations": args.iterations or None,
            "conditions": args.conditions or None, "samples": args.samples or None,
            "horizon": args.horizon, "seed": args.seed, "name": args.name}
    try:
        if args.config:
            cfg = load_config(args.config, **over)
        else:
            cfg = GPSRunConfig(**{k: v for k, v in over.items() if v is not None})
        cfg = dataclasses.replace(cfg, out=Path(args.out), quick=args.quick,
                                  progress=not args.no_progress, resume=args.resume)
        cfg = cfg.resolved()
    except (ValueError, TypeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"guided policy search (MDGPS): {cfg.robot}, {cfg.conditions} conditions x "
          f"{cfg.samples} samples x {cfg.horizon} steps, {len(cfg.heldout_targets)} held-out, "
          f"{cfg.iterations} iterations -> {cfg.out}" + (" (resuming)" if cfg.resume else ""))
    nodes: list = []

    def node_sampler(task):
        # Samples through the lockstep simulator and controller nodes (one process, a
        # private domain): mbrl_ros.ros.gps_driver.
        from mbrl_ros.ros.gps_driver import NodeSampler
        import time as _time
        bags = Path(cfg.out) / "nodes" / f"bags-{_time.strftime('%Y%m%dT%H%M%S')}"
        nodes.append(NodeSampler(task.env, task.targets, Path(cfg.out) / "nodes",
                                 bag_dir=bags))
        return nodes[-1]
    try:
        rep = run_gps(cfg, sampler_factory=node_sampler if args.through_nodes else None)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        for n in nodes:
            n.close()

    print_report(rep, cfg.out, nodes)
    return 0


def print_report(rep: dict, out, nodes: list) -> None:
    """The per-iteration table of a finished run (``run_gps``'s report ``rep``, output
    directory ``out``) and where its results are; ``nodes``: the node samplers used
    (``--through-nodes``), if any."""
    from mbrl_ros.core.plots import kl_max

    def cm(v):
        return f"{max(v) * 100:9.2f}" if v else f"{'-':>9}"

    print(f"\n{'it':>3} {'sim s':>7} {'local cost':>10} {'local cm':>9} {'pol cm':>9} "
          f"{'held cm':>9} {'KL bound':>8} {'KL model':>8} {'KL smpl':>8} {'disc':>4}")
    for r in rep["iterations"]:
        ks = r["kl_samples"]
        print(f"{r['iteration']:>3} {r['interaction_seconds']:>7.1f} {r['local_cost']:>10.4g} "
              f"{cm(r['final_distance_m'])} {cm(r['policy_final_distance_m'])} "
              f"{cm(r['policy_heldout_distance_m'])} {r['kl_bound']:>8.3g} "
              f"{kl_max(r['kl_model']):>8.3g} {(format(kl_max(ks), '8.3g') if ks else '-'):>8} "
              f"{r['discarded_samples']:>4}")
        for w in r["warnings"]:
            print(f"    warning: {w}")
    print("(distances: end effector, worst condition)")
    if rep.get("best"):
        b = rep["best"]
        print(f"best policy: iteration {b['iteration']} (held-out mean "
              f"{b['score_m'] * 100:.2f} cm) -> {rep['latest']} (the gps_policy planner's "
              f"'artifact'; it follows the controller's target)")
    if rep.get("plot"):
        print(f"metrics {Path(out) / 'metrics.json'}\nplot {rep['plot']}")
    if nodes:
        n = nodes[0]
        print(f"through the nodes: {n.samples} episodes in {n.seconds:.1f} s "
              f"({n.seconds / max(n.samples, 1) * 1000:.0f} ms each); artifacts in "
              f"{Path(out) / 'nodes'}, bag and episode index in {n.bag_dir}")
    print(f"took {rep['wall_seconds']:.1f} s")
