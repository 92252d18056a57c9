"""The GP and linear models give the same figures as at commit 801939c (before the GP
model was split into a package and the input pipeline was shared): predictions, variances,
linearisations, noise variances, GPyTorch reference predictions and artifact round trips of
every GP mode and of linear, on the fixed arm2 / cartpole data sets of
``bench/model_equivalence.py``, within rtol 1e-9 / atol 1e-10 (same seeds, one thread).

Regenerate ``test/resources/model_equivalence.json`` only for an intended change of
behaviour: ``python bench/model_equivalence.py --json test/resources/model_equivalence.json``.
"""
import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("model_equivalence",
                                                  ROOT / "bench" / "model_equivalence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gp_and_linear_figures_unchanged():
    bench = _bench()
    ref = json.loads(bench.REFERENCE.read_text())
    prev = torch.get_num_threads()
    try:
        new = bench.run()
    finally:
        torch.set_num_threads(prev)
    assert set(new) == set(ref)
    bad = bench.compare(new, ref)
    assert not bad, "\n".join(bad)


def test_compare_detects_a_change():
    bench = _bench()
    ref = {"m": {"values": {"a": [1.0, 2.0]}, "fit_seconds": 0.1}}
    assert bench.compare({"m": {"values": {"a": [1.0, 2.0 + 1e-12]}}}, ref) == []
    assert bench.compare({"m": {"values": {"a": [1.0, 2.0 + 1e-6]}}}, ref)
    assert bench.compare({"m": {"values": {}}}, ref) == ["m.a: missing"]
    assert np.isfinite(ref["m"]["fit_seconds"])
