#!/usr/bin/env python3
"""Replan time of the sampling planners with their default settings against issue 4's
target: MPPI / CEM over a 5-member ensemble, 256 samples x 30 steps, >= 30 Hz (<= 33.3 ms
per replan, one core).

The problem is the anchors' P2 (../shared/anchors: 5 x MLP 21-200-200-200-200-14 SiLU,
nx=14, nu=7, T=30) with our EnsembleModel holding its weights (bench/anchors.py,
``p2_factory``). Unlike the anchors harness, which times one variant after the other, the
variants here alternate call by call, so a noisy stretch of this shared VM hits all of
them alike; each replan is split into the sampled rollouts and the nominal (mean-state)
rollout from the planner's own stats.

Usage: python bench/sampling_rate.py [--quick] [--json PATH]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
from _common import percentile, write_json  # noqa: E402

# bench/anchors.py (our P2 candidates) under another name: it imports the shared harness,
# also called ``anchors``, which pins every thread pool to one thread.
_spec = importlib.util.spec_from_file_location(
    "bench_anchors", os.path.join(os.path.dirname(__file__), "anchors.py"))
bench_anchors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_anchors)
anchors, p2_factory = bench_anchors.anchors, bench_anchors.p2_factory

VARIANTS = ("mppi_default", "cem_default", "mppi_no_mean_rollout")
TARGET_MS = 1000.0 / 30.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 rounds instead of 100")
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args()
    units = p2_factory(anchors.make_p2())
    rounds, warmup = (20, 3) if a.quick else (100, 5)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    load = [os.getloadavg()[0]]
    for r in range(rounds + warmup):
        for v in VARIANTS:
            t0 = time.perf_counter()
            units[v]()
            if r >= warmup:
                times[v].append((time.perf_counter() - t0) * 1e3)
    load.append(os.getloadavg()[0])
    out = {"benchmark": "sampling_rate", "rounds": rounds,
           "target_ms": TARGET_MS, "load_1min_start_end": load, "variants": {}}
    for v in VARIANTS:
        ts = times[v]
        row = {"median_ms": round(percentile(ts, 50), 2), "p90_ms": round(percentile(ts, 90), 2),
               "min_ms": round(min(ts), 2)}
        row["rate_hz_median"] = round(1000.0 / row["median_ms"], 1)
        row["meets_30hz_median"] = row["median_ms"] <= TARGET_MS
        out["variants"][v] = row
        print(f"{v:22s} median {row['median_ms']:7.2f} ms  p90 {row['p90_ms']:7.2f} ms  "
              f"min {row['min_ms']:7.2f} ms  -> {row['rate_hz_median']:5.1f} Hz", flush=True)
    print(f"load average (1 min) at start / end: {load[0]:.2f} / {load[1]:.2f}")
    write_json(a.json, out)


if __name__ == "__main__":
    main()
