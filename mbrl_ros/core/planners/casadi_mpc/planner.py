"""LTV-MPC with CasADi: multiple-shooting QP along the model's linearisation, solved by
HPIPM (default), qrqp, OSQP, IPOPT or FATROP.

Problem solved at every replan (horizon T, decision variables declared stage by stage,
``w = [x_0, u_0, x_1, u_1, ..., x_{T-1}, u_{T-1}, x_T]``, the order structure-exploiting
solvers such as HPIPM and FATROP detect as an optimal-control problem)::

    min   sum_t 0.5 z_t' H_t z_t + g_t' z_t  +  0.5 x_T' H_T x_T + g_T' x_T,   z_t = [x_t; u_t]
    s.t.  x_0 = x0                                   (bounds lbx = ubx on x_0)
          x_{t+1} = fx_t x_t + fu_t u_t + f0_t       (the model's Linearization)
          u_min <= u_t <= u_max
          q_lo <= q_t <= q_hi,  |qd_t| <= v_max      (t >= 1; optional)

The dynamics are the model's affine approximation ``model.linearize(xs, us)`` along the
nominal trajectory (LTV-MPC); the cost is its quadratic model (:mod:`.quadratic_model`).

One ``optimize`` call is the real-time iteration of Diehl, Bock & Schloeder ("A real-time
iteration scheme for nonlinear optimization in optimal feedback control", SIAM J. Control
Optim. 2005): the previous solution shifted by the elapsed steps is the linearisation point
(its first state replaced by the measured x0), one convex QP is solved, and its solution is
the new plan. ``iterations > 1`` repeats linearise-and-solve around each new solution
(sequential convex programming) until the control step is below ``tol_step``.

Modules, as ``ilqr/`` is split:

* :mod:`.settings`        -- :class:`CasadiMPCSettings` (one schema: docs, ranges, ROS parameters);
* :mod:`.quadratic_model` -- the cost's quadratic model (the QP objective);
* :mod:`.problem`         -- :class:`~.problem.ProblemLayout`, the problem template every solver
  path shares: variable order, sparsity of H and A, warm-start shifts, bounds, solution check;
* :mod:`.backends`        -- the solver template and its two paths, ``casadi.conic`` (hpipm,
  qrqp, osqp: numeric H, A) and ``casadi.nlpsol`` (ipopt, fatrop: H, A as parameters), built
  once per (T, nx, nu, solver options); a replan only writes numbers into preallocated
  buffers;
* this module             -- :class:`CasadiMPCPlanner`: the real-time iteration, the
  fallbacks and the feedback gains.

Feedback: after the solve, a Riccati sweep of the same linearisation and cost Hessians
around the solution (the iLQR backward pass,
:class:`mbrl_ros.core.lqr.backward_pass.BackwardPass`, with the control limits
as a box so saturated controls get zero gain) gives the LQR gains K_t, returned in the
:class:`LinearGaussianPolicy` (``feedback=False``: K = 0). State bounds are not seen by the
gains.

Failures never raise inside the control loop: if the solver reports failure (infeasible,
iteration limit, numerical trouble) or returns a solution that violates the bounds or the
linearised dynamics by more than ``feasibility_tolerance`` (qrqp can report success with
joint bounds violated), the problem is first re-solved without state bounds
(``relax_state_bounds``; state bounds can be infeasible when the robot is already past a
limit), and if that fails too the previous plan, shifted to the current time, is returned
with ``stats['status'] == 'failed'``. Only configuration errors raise ``ValueError``.

Solver comparison (solve times, iterations, failures on arm7) and the rejected
alternatives: BENCHMARKS.md, "Issue 4", 'CasADi LTV-MPC solvers'.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.lqr import BackwardPass, BackwardResult, warm_up
from mbrl_ros.core.planners.base import Planner, shift_trajectory
from mbrl_ros.core.planners.casadi_mpc.backends import SolverBackend, make_backend
from mbrl_ros.core.planners.casadi_mpc.problem import ProblemLayout
from mbrl_ros.core.planners.casadi_mpc.quadratic_model import QuadraticModel, quadratic_model
from mbrl_ros.core.planners.casadi_mpc.settings import CasadiMPCSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

__all__ = ["CasadiMPCPlanner", "QuadraticModel", "quadratic_model"]

# Regularisations tried, in order, when the Riccati sweep for the gains meets a Q_uu that
# is not positive definite.
_FEEDBACK_MU = (0.0, 1e-8, 1e-6, 1e-4, 1e-2, 1.0)


@registry.register("planner", "casadi_mpc")
class CasadiMPCPlanner(Planner):
    """Linear time-varying MPC solved with CasADi (real-time iteration).

    Args:
        settings: :class:`CasadiMPCSettings` (None: defaults).
        nx, nu: state and action dimensions; the state is ``[q (nx/2), qd (nx/2)]`` when
            position or velocity bounds are used.
        u_min, u_max: (nu,) action limits (N*m or N; +-inf allowed).
        dt: model step [s].
        position_limits: (nx/2, 2) joint position bounds [lower, upper] (rad or m; +-inf:
            none) imposed on x_1..x_T, e.g. ``MujocoSim.position_limits``; None: none.
            Also settable later with :meth:`set_position_limits`.

    ``stats`` after ``optimize``: status ('solved'; 'solved_relaxed': state bounds dropped
    to regain feasibility; and, with the previous plan shifted to t0 returned instead:
    'failed', 'nonfinite_linearization', 'nonfinite_cost'), solver_status (the solver's
    own, or why its answer was rejected), solver, iterations (convexifications),
    solver_iterations (sum), cost (true cost of the returned plan), objective (QP
    objective without constant), step (last max relative control change), max_defect
    (max |model.predict(x_t, u_t) - x_{t+1}| along the plan: the linearisation error),
    projected_hessians, feedback ('riccati'; 'previous': gains of the shifted previous
    plan; 'none'; 'failed': Riccati sweep failed, K = 0), warm_start_shift, build_time_s,
    solve_time_s (whole call), solver_time_s, time_linearize_s, time_cost_s,
    time_feedback_s (seconds).

    Raises:
        ValueError: inconsistent limits or settings (at construction); the requested solver
            plugin cannot be created (at the first ``optimize``).
    """
    name = "casadi_mpc"
    Settings = CasadiMPCSettings

    def __init__(self, settings: Any, nx: int, nu: int, u_min: np.ndarray,
                 u_max: np.ndarray, dt: float, position_limits: np.ndarray | None = None):
        self._position_limits: np.ndarray | None = None
        self._violation = 0.0
        self._backends: dict[tuple, tuple[ProblemLayout, SolverBackend]] = {}
        self._bp: BackwardPass | None = None
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        self.set_position_limits(position_limits)
        self._velocity_bound()  # validate the settings now, not in the control loop
        warm_up()               # the compiled Riccati sweep of the gains, likewise

    # -- configuration --------------------------------------------------------------------
    def set_position_limits(self, limits: np.ndarray | None) -> None:
        """Joint position bounds (nx/2, 2) [lower, upper] on x[:nx/2] (rad or m; +-inf:
        unbounded), or None to remove them.

        Raises:
            ValueError: wrong shape, NaN, lower > upper, or nx odd.
        """
        if limits is None:
            self._position_limits = None
            return
        lim = np.array(limits, dtype=np.float64)
        if self.nx % 2:
            raise ValueError(f"position limits need a state [q, qd] of even size, nx={self.nx}")
        n = self.nx // 2
        if lim.shape != (n, 2):
            raise ValueError(f"position_limits must have shape ({n}, 2), got {lim.shape}")
        if np.isnan(lim).any() or np.any(lim[:, 0] > lim[:, 1]):
            raise ValueError(f"position_limits must satisfy lower <= upper, got {lim.tolist()}")
        self._position_limits = lim

    @property
    def position_limits(self) -> np.ndarray | None:
        """(nx/2, 2) joint position bounds, or None."""
        return None if self._position_limits is None else self._position_limits.copy()

    def _velocity_bound(self) -> np.ndarray | None:
        v = self.settings.velocity_limits
        if not v:
            return None
        if self.nx % 2:
            raise ValueError(f"velocity_limits need a state [q, qd] of even size, nx={self.nx}")
        n = self.nx // 2
        v = np.asarray(v, dtype=np.float64)
        if v.size == 1:
            v = np.full(n, float(v[0]))
        if v.shape != (n,) or np.any(~(v >= 0)):
            raise ValueError(f"velocity_limits must be one value or {n} values >= 0, "
                             f"got {self.settings.velocity_limits}")
        return v

    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        super().reset(horizon, initial_actions)
        self._K: np.ndarray | None = None
        self._lam_x: np.ndarray | None = None
        self._lam_g: np.ndarray | None = None

    def _on_warm_start(self) -> None:
        self._K = None
        self._lam_x = None
        self._lam_g = None

    def _backend(self, T: int) -> tuple[ProblemLayout, SolverBackend, float]:
        s = self.settings
        key = (T, s.solver, s.max_solver_iterations, s.tolerance, s.hpipm_mode,
               bool(s.warm_start))
        if key in self._backends:
            layout, backend = self._backends[key]
            return layout, backend, 0.0
        tic = time.perf_counter()
        layout = next((lay for (t, *_), (lay, _) in self._backends.items() if t == T), None)
        layout = layout or ProblemLayout(T, self.nx, self.nu)
        try:
            backend = make_backend(layout, s)
        except RuntimeError as e:  # CasADi raises RuntimeError for plugin/option errors
            raise ValueError(f"casadi_mpc: cannot create solver {s.solver!r}: {e}") from e
        # Keep only the newest build per horizon (settings changes would otherwise pile up).
        self._backends = {k: v for k, v in self._backends.items() if k[0] != T}
        self._backends[key] = (layout, backend)
        return layout, backend, time.perf_counter() - tic

    def prepare(self) -> float:
        """Build the solver for the current horizon and settings now instead of in the
        first :meth:`optimize` (IPOPT/FATROP take seconds to build for arm7-sized
        problems). Returns the build time [s] (0 if it was already built)."""
        return self._backend(self.horizon)[2]

    # -- helpers ----------------------------------------------------------------------------
    def _rollout(self, model: Any, x0: np.ndarray, us: np.ndarray) -> np.ndarray:
        T = us.shape[0]
        xs = np.empty((T + 1, self.nx))
        xs[0] = x0
        tv = bool(getattr(model, "time_varying", False))
        with np.errstate(invalid="ignore", over="ignore"):
            for t in range(T):
                xs[t + 1] = (model.predict(xs[t], us[t], t) if tv
                             else model.predict(xs[t], us[t]))[0][0]
        if not np.isfinite(xs).all():
            # Multiple shooting does not need a consistent nominal: linearise at x0.
            xs[:] = x0
        return xs

    def _bounds(self, x0: np.ndarray, layout: ProblemLayout, with_state: bool
                ) -> tuple[np.ndarray, np.ndarray]:
        """(lbx, ubx) of the problem from x0; ``with_state``: with the position and
        velocity bounds on x_1..x_T, else torque bounds only."""
        nx = self.nx
        xlo = np.full(nx, -np.inf)
        xhi = np.full(nx, np.inf)
        if with_state:
            n = nx // 2
            if self._position_limits is not None:
                xlo[:n] = self._position_limits[:, 0]
                xhi[:n] = self._position_limits[:, 1]
            v = self._velocity_bound()
            if v is not None:
                xlo[n:] = -v
                xhi[n:] = v
        return layout.bounds(x0, *self._ubounds, xlo, xhi)

    def _feasible(self, w: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], lin,
                  layout: ProblemLayout) -> bool:
        """Accept a solver's answer only within ``feasibility_tolerance`` of the bounds and
        the linearised dynamics (:meth:`ProblemLayout.violation`)."""
        self._violation = layout.violation(w, bounds, lin)
        return self._violation <= self.settings.feasibility_tolerance

    def _has_state_bounds(self) -> bool:
        pl = self._position_limits
        return ((pl is not None and bool(np.isfinite(pl).any()))
                or self._velocity_bound() is not None)

    def _gains(self, lin, qm: QuadraticModel, xs: np.ndarray, us: np.ndarray
               ) -> tuple[np.ndarray | None, str]:
        """LQR gains of the convexified problem around the solution (Riccati sweep with
        the control limits as a box: saturated controls get zero gain)."""
        T, nx = self.horizon, self.nx
        if self._bp is None or self._bp.T != T:
            self._bp = BackwardPass(T, nx, self.nu)
        z = np.concatenate([xs[:T], us], axis=1)
        gz = np.einsum("tij,tj->ti", qm.H, z) + qm.g
        lfx = qm.Hf @ xs[T] + qm.gf
        self._bp.prepare(lin.fx, lin.fu, gz[:, :nx], gz[:, nx:], qm.H[:, :nx, :nx],
                         qm.H[:, nx:, nx:], qm.H[:, nx:, :nx], lfx, qm.Hf)
        lo, hi = self._ubounds
        box = bool(np.isfinite(lo).any() or np.isfinite(hi).any())
        # Controls within solver tolerance of a bound count as on it.
        du_lo = np.minimum(lo - us, 0.0) if box else None
        du_hi = np.maximum(hi - us, 0.0) if box else None
        for mu in _FEEDBACK_MU:
            res = self._bp.run(mu, du_lo, du_hi)
            if isinstance(res, BackwardResult):
                return res.K, "riccati"
        return None, "failed"

    # -- planning ---------------------------------------------------------------------------
    def optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any
                 ) -> LinearGaussianPolicy:
        """Solve the LTV-MPC problem from x0 (nx,) at time t0 [s] (``iterations``
        linearise-and-solve rounds) and return the policy of the new plan.

        Args:
            x0: (nx,) current state.
            t0: current time [s] (step 0 of the returned policy).
            model: a DynamicsModel with ``predict`` and ``linearize`` at step ``dt``.
            cost: a :class:`~mbrl_ros.core.costs.quadratic.Cost`.

        Returns:
            The :class:`LinearGaussianPolicy` of the new plan, or of the previous plan
            shifted to t0 if the solver failed (see ``stats['status']``).

        Raises:
            ValueError: the configured solver cannot be created (first call only).
        """
        s = self.settings
        T, nx, nu = self.horizon, self.nx, self.nu
        t_start = time.perf_counter()
        x0 = np.asarray(x0, dtype=np.float64).reshape(nx)
        layout, backend, build_time = self._backend(T)
        # The action limits, narrowed where the effort rate cannot reach (action_bounds).
        self._ubounds = self.action_bounds(t0)
        timings = {"time_linearize_s": 0.0, "time_cost_s": 0.0, "solver_time_s": 0.0,
                   "time_feedback_s": 0.0}

        us, shift = self._initial_actions(t0)
        if self._xs is not None:
            xs = np.array(shift_trajectory(self._xs, shift))
            xs[0] = x0
        else:
            xs = self._rollout(model, x0, us)
        K_prev = shift_trajectory(self._K, shift)
        # The fallback plan: previous solution shifted (or the initial guess).
        fallback = (xs.copy(), us.copy(), K_prev)
        w0 = layout.pack(xs, us)
        lam_x = np.zeros(layout.nw)
        lam_g = np.zeros(layout.ng)
        if s.warm_start and backend.uses_duals and self._lam_x is not None:
            lam_x = layout.shift_primal(self._lam_x, shift)
            lam_g = layout.shift_rows(self._lam_g, shift)
            # x_0's bound multiplier belongs to the old initial state.
            lam_x[:nx] = 0.0
        if not s.warm_start:
            w0 = np.zeros(layout.nw)
        state_bounds = self._has_state_bounds()
        bounds = self._bounds(x0, layout, True)
        relaxed_bounds = None

        status, solver_status = "failed", ""
        iterations = solver_iterations = projected = 0
        objective, step = float("nan"), float("nan")
        solved = False
        lin = qm = None
        for _ in range(s.iterations):
            iterations += 1
            tic = time.perf_counter()
            lin_k = model.linearize(xs[:T], us)
            toc = time.perf_counter()
            timings["time_linearize_s"] += toc - tic
            if not (np.isfinite(lin_k.fx).all() and np.isfinite(lin_k.fu).all()
                    and np.isfinite(lin_k.f0).all()):
                status = "nonfinite_linearization"
                break
            qm_k = quadratic_model(cost, xs, us)
            if s.hessian_regularization > 0:
                idx = np.arange(nx + nu)
                qm_k.H[:, idx, idx] += s.hessian_regularization
                idx = np.arange(nx)
                qm_k.Hf[idx, idx] += s.hessian_regularization
            timings["time_cost_s"] += time.perf_counter() - toc
            if not (np.isfinite(qm_k.H).all() and np.isfinite(qm_k.g).all()
                    and np.isfinite(qm_k.Hf).all() and np.isfinite(qm_k.gf).all()):
                status = "nonfinite_cost"
                break
            H_src, A_src, g, b = layout.sources(qm_k, lin_k)
            res = backend.solve(H_src, A_src, g, b, *bounds, w0, lam_x, lam_g)
            timings["solver_time_s"] += res.solver_time_s
            solver_iterations += max(res.iterations, 0)
            ok = res.success and self._feasible(res.w, bounds, lin_k, layout)
            this_status = "solved"
            if not ok and state_bounds and s.relax_state_bounds:
                if relaxed_bounds is None:
                    relaxed_bounds = self._bounds(x0, layout, False)
                res = backend.solve(H_src, A_src, g, b, *relaxed_bounds, w0, lam_x, lam_g)
                timings["solver_time_s"] += res.solver_time_s
                solver_iterations += max(res.iterations, 0)
                ok = res.success and self._feasible(res.w, relaxed_bounds, lin_k, layout)
                this_status = "solved_relaxed"
            solver_status = res.status
            if res.success and not ok:
                solver_status = f"{res.status} (solution violates the constraints by " \
                    f"{self._violation:.3g} > feasibility_tolerance)"
            if not ok:
                status = "failed"
                break
            xs_new, us_new = layout.unpack(res.w)
            # Interior-point solutions may sit a hair outside the box; the policy clips anyway.
            us_new = np.clip(us_new, *self._ubounds)
            step = float(np.max(np.abs(us_new - us) / (np.abs(us) + 1.0)))
            xs, us = xs_new, us_new
            xs[0] = x0
            lin, qm = lin_k, qm_k
            projected = qm_k.projected
            objective = res.objective
            solved = True
            status = this_status
            lam_x, lam_g = res.lam_x, res.lam_g
            w0 = res.w
            if step < s.tol_step:
                break

        if solved:
            K, feedback = None, "none"
            if s.feedback:
                tic = time.perf_counter()
                K, feedback = self._gains(lin, qm, xs, us)
                timings["time_feedback_s"] = time.perf_counter() - tic
            if K is None:
                K = np.zeros((T, nu, nx))
            self._lam_x, self._lam_g = lam_x, lam_g
        else:
            xs, us, K = fallback
            feedback = "previous" if K is not None else "none"
            if K is None:
                K = np.zeros((T, nu, nx))
            if status == "failed" and not solver_status:
                solver_status = "not_solved"
            self._lam_x = self._lam_g = None
        with np.errstate(invalid="ignore", over="ignore"):
            J = float(cost.total(xs, us))
            if getattr(model, "time_varying", False):
                pred = np.concatenate([model.predict(xs[t], us[t], t)[0] for t in range(T)])
            else:
                pred = model.predict(xs[:T], us)[0]
            defect = float(np.max(np.abs(pred - xs[1:])))
        self._xs, self._us, self._K = xs, us, K
        self._t_nominal = float(t0)
        self.stats = dict(status=status, solver_status=solver_status, solver=s.solver,
                          iterations=iterations, solver_iterations=solver_iterations,
                          cost=J, objective=objective, step=step, max_defect=defect,
                          projected_hessians=projected, feedback=feedback,
                          warm_start_shift=shift, build_time_s=build_time,
                          solve_time_s=time.perf_counter() - t_start, **timings)
        return LinearGaussianPolicy(K=K, k=us, xbar=xs[:T], cov=None, t0=t0, dt=self.dt,
                                    u_min=self.u_min, u_max=self.u_max)
