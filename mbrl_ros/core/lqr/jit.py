"""How the LQR kernels are compiled, and the one array type they are compiled for.

Compilation never happens inside a control loop:

* every kernel is ``cache=True``: numba stores the machine code on disk -- under
  ``NUMBA_CACHE_DIR`` if set, else in ``__pycache__`` next to the kernel's file if writable
  (an editable install), else in the user cache directory (``~/.cache/numba``; a read-only
  installed package). If none is writable, the kernels are compiled once per process.
* :func:`.warmup.warm_up` loads (or, on the first run ever, compiles) every kernel with
  inputs of the exact types the wrappers pass; planners call it at construction (the
  controller node constructs its planner at ``configure``). The wrappers convert every
  argument to those types (:func:`as_f64`: C-contiguous writable float64 arrays; Python
  floats/ints/bools), so a call never triggers a new specialisation;
  ``test_ilqr_kernels.py`` checks that each dispatcher has exactly one signature after
  solves of different shapes.

numba invalidates a cached kernel only when the kernel's own file changes, not when a
compiled function it calls (in another file) does: a kernel and the compiled helpers it
calls stay in one file (:mod:`.kernels`, :mod:`.rollout`).
"""
from __future__ import annotations

import warnings

import numba
import numpy as np

__all__ = ["as_f64", "jit"]


def jit(fn=None, *, inline: bool = False):
    """numba.njit with the on-disk cache (nogil: the node's planning thread keeps the GIL
    free for the control thread); without a writable cache location, without the cache.
    ``@jit(inline=True)``: a helper of other kernels, inlined into them at numba's IR level
    (a called helper cost the affine rollout 13 %, inlined 0.5 %)."""
    if fn is None:
        return lambda f: jit(f, inline=inline)
    opts = {"nogil": True, **({"inline": "always"} if inline else {})}
    try:
        return numba.njit(cache=True, **opts)(fn)
    except RuntimeError as e:          # "cannot cache function ...: no locator available"
        warnings.warn(f"numba cannot cache {fn.__name__} ({e}); it is compiled once per "
                      "process at warm-up. Set NUMBA_CACHE_DIR to a writable directory.",
                      RuntimeWarning, stacklevel=2)
        return numba.njit(**opts)(fn)


def as_f64(a, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """``a`` (broadcast to ``shape`` if given) as the one array type the kernels are compiled
    for: float64, C-contiguous, writable (numba specialises on read-only arrays too, so a
    frozen or broadcast array would otherwise compile a new version at call time)."""
    if (type(a) is np.ndarray and a.dtype == np.float64 and a.flags.c_contiguous
            and a.flags.writeable and (shape is None or a.shape == shape)):
        return a
    a = np.asarray(a, dtype=np.float64)
    if shape is not None and a.shape != shape:
        a = np.broadcast_to(a, shape)
    return np.require(a, np.float64, ("C", "W"))

