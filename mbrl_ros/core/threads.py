"""Thread-pool limits for numerical libraries.

The control loop, iLQR and the local-model fits work on small matrices (14x21, 50 steps),
where a multi-threaded BLAS costs far more in synchronisation than it gains, above all on a
loaded machine (BENCHMARKS.md, "Figures moved out of docstrings (issue 13)").
Nodes, the CLI and the benchmarks call :func:`limit_threads` once at start; torch's own
pool is set by the models from their ``threads`` setting.
"""
from __future__ import annotations

from threadpoolctl import threadpool_limits

_LIMITER = None


def limit_threads(blas: int = 1) -> None:
    """Limit BLAS/OpenMP pools (numpy, scipy) to ``blas`` threads for this process."""
    global _LIMITER
    _LIMITER = threadpool_limits(limits=blas)
