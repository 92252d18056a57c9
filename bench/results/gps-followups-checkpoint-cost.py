"""Checkpoint cost: pickle (before) vs plain-data checkpoint (after) of the same MDGPS."""
import json, pickle, sys, tempfile, time
from pathlib import Path
import numpy as np, torch
from mbrl_ros.core.algorithms.gps import MDGPS, GPSSettings
from mbrl_ros.core.algorithms.gps_run import GPSRunConfig
from mbrl_ros.core.algorithms.gps_checkpoint import save_checkpoint, load_checkpoint
from mbrl_ros.core.algorithms.sim_env import reach_task
from mbrl_ros.core.policies.neural import PolicySettings
torch.set_num_threads(1)
robot, T, n_it = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
cfg = GPSRunConfig(robot=robot, horizon=T, iterations=n_it, progress=False).resolved()
task = reach_task(cfg.robot, conditions=cfg.conditions, horizon=T, seed=0, starts=cfg.starts,
                  targets=cfg.targets, init_std=cfg.init_std, init_damping=cfg.init_damping,
                  init_kp=cfg.init_kp)
mk = lambda: MDGPS(task.env, task.costs, GPSSettings(horizon=T, samples=5, seed=0),
                   policy=PolicySettings(iterations=100),
                   initial_controllers=task.initial_controllers, tasks=task.targets)
gps = mk()
for _ in range(n_it):
    gps.iteration()
run = {"config": cfg.to_json(), "iterations": [], "best": None}
res = {}
with tempfile.TemporaryDirectory() as d:
    d = Path(d)
    def best(f, n=5):
        ts = []
        for _ in range(n):
            t0 = time.perf_counter(); f(); ts.append(time.perf_counter() - t0)
        return min(ts)
    def pk():
        with open(d / "state.pkl", "wb") as fh:
            pickle.dump({"gps": gps, **run}, fh, protocol=pickle.HIGHEST_PROTOCOL)
    res["pickle_write_s"] = best(pk)
    res["pickle_bytes"] = (d / "state.pkl").stat().st_size
    res["pickle_read_s"] = best(lambda: pickle.loads((d / "state.pkl").read_bytes()))
    res["ckpt_write_s"] = best(lambda: save_checkpoint(d / "ck", gps, run))
    p = d / "ck" / f"it{gps.iteration_count:04d}"
    res["ckpt_bytes"] = sum(f.stat().st_size for f in p.iterdir())
    res["ckpt_read_s"] = best(lambda: load_checkpoint(p, mk()))
    res["mdgps_construct_s"] = best(mk)
res.update(robot=robot, horizon=T, iterations=n_it, conditions=cfg.conditions)
print(json.dumps(res))
