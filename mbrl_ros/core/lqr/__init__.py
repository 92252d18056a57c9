"""The shared LQR pieces: the control-limited Riccati backward pass and the box QP it
solves where limits bind, compiled (numba) and loaded ahead of control time.

Used by the iLQR planner, the sampling planners' LQR feedback and refinement, and the CasADi
planner's feedback gains. Modules: :mod:`.backward_pass` (the sweep's interface and algebra),
:mod:`.boxqp` (projected-Newton box QP), :mod:`.kernels` and :mod:`.rollout` (the compiled
arithmetic), :mod:`.jit` (how they are compiled), :mod:`.warmup` (loading them once per
process).
"""
from mbrl_ros.core.lqr.backward_pass import BackwardPass, BackwardResult
from mbrl_ros.core.lqr.boxqp import STATUS_MESSAGES, BoxQPResult, solve_boxqp
from mbrl_ros.core.lqr.warmup import warm_up, warm_up_seconds

__all__ = ["BackwardPass", "BackwardResult", "BoxQPResult", "STATUS_MESSAGES", "solve_boxqp",
           "warm_up", "warm_up_seconds"]
