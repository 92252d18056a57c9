"""Test-wide set-up: single-threaded BLAS and torch, as the nodes and the CLI run (see
mbrl_ros.core.threads; the models set torch's pool from their ``threads`` setting):
small-matrix numerics are faster and timing is more repeatable."""
from mbrl_ros.core.threads import limit_threads

limit_threads()


def pytest_sessionstart(session):
    """Load (on a fresh clone: compile, ~10 s of CPU) the compiled iLQR kernels once before
    any test, so that the first test constructing a planner does not pay it inside its
    timeout; later processes (nodes) load them from numba's on-disk cache."""
    import torch

    from mbrl_ros.core.lqr import warm_up
    torch.set_num_threads(1)
    warm_up()
