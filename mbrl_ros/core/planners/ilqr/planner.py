"""iLQR / iLQG planner: control-limited differential dynamic programming for MPC.

Algorithm (one ``optimize`` call, at most ``max_iterations`` iterations):

1. Nominal: the previous solution shifted by the time elapsed since it was planned (last
   action repeated), rolled out from x0 through the model with the previous feedback gains
   (so the nominal follows the current state), or zero actions after :meth:`reset`.
2. Linearise the model along the nominal (one batched ``model.linearize_mean`` call where
   the model offers it -- the Jacobians without the covariance, which the update does not
   use -- else ``model.linearize``) and take the cost derivatives.
3. Backward pass (:mod:`.backward_pass`): Riccati sweep with Levenberg-Marquardt
   regularisation mu on V_xx (Tassa, Erez & Todorov, "Synthesis and stabilization of
   complex behaviors through online trajectory optimization", IROS 2012) and, with action
   limits, a box QP per step (Tassa, Mansard & Todorov, "Control-Limited Differential
   Dynamic Programming", ICRA 2014). A non-positive-definite Q_uu raises mu and retries.
4. Forward pass: nonlinear rollout of u = clip(u_t + alpha k_t + K_t (x - x_t)) for the
   line-search step sizes alpha in order, accepting the first whose actual/expected cost
   reduction exceeds ``min_reduction_ratio`` (the step sizes rolled out in batches as
   ``parallel_line_search`` says: :meth:`ILQRPlanner._line_search_groups`); accepted steps
   lower mu, rejected iterations raise it (the schedule of Tassa et al. 2012).
5. Stop on a small Newton step (gradient criterion of Tassa's iLQG.m), a small relative
   cost change, or the iteration budget -- or, with a deadline from the controller
   (:meth:`Planner.set_deadline`), when another iteration would end past it (at least one
   iteration always runs).

The returned :class:`LinearGaussianPolicy` has the nominal states and controls and the
last feedback gains, and (iLQG, as GPS uses it) the controller covariance inv(Q_uu).
Model noise (``Linearization.cov``) does not change the LQG solution (its expected cost is
a constant), so it is not used by the update.

The nominal is a single-shooting rollout of the model's mean; ``Linearization.f0`` is not
needed because the linearisation is taken along that rollout. Rollouts are one compiled
call (:mod:`mbrl_ros.core.lqr.rollout`, feedback and clipping inside) for models that
expose their mean as arrays -- ``affine_dynamics()`` (linear models) or ``mlp_dynamics()``
(the ensemble) -- and else a loop over the steps calling ``predict_mean`` (the GP: no
variance) or ``predict``. Time-varying models get the step index within the plan
(0..T-1) as ``t``.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from mbrl_ros.core import registry
from mbrl_ros.core.lqr import BackwardPass, BackwardResult, warm_up
from mbrl_ros.core.lqr.jit import as_f64
from mbrl_ros.core.lqr.kernels import spd_inverse_kernel
from mbrl_ros.core.lqr.rollout import (GP_KERNELS, MLP_ACTIVATIONS, affine_rollout_kernel,
                                       kernel_rollout_kernel, mlp_rollout_kernel)
from mbrl_ros.core.planners.base import Planner, shift_trajectory
from mbrl_ros.core.planners.ilqr.settings import ILQRSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

__all__ = ["ILQRPlanner"]


def _pd_inverse(H: np.ndarray) -> np.ndarray:
    """Batched inverse of symmetric matrices (T, n, n), eigenvalues floored so the result
    is a valid covariance even where H is indefinite (possible on clamped controls)."""
    out = np.empty(H.shape)
    if spd_inverse_kernel(as_f64(H), out):          # Cholesky of 0.5 (H + H') per step
        return out
    H = 0.5 * (H + np.swapaxes(H, 1, 2))
    w, V = np.linalg.eigh(H)
    floor = 1e-9 * np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-12)
    w = np.maximum(w, floor)
    return (V / w[:, None, :]) @ np.swapaxes(V, 1, 2)


@registry.register("planner", "ilqr")
class ILQRPlanner(Planner):
    """Iterative LQR with control limits (box-QP DDP) and iLQG policy covariance.

    Args:
        settings: :class:`ILQRSettings` (None: defaults).
        nx, nu: state and action dimensions.
        u_min, u_max: (nu,) action limits.
        dt: model step [s].

    ``stats`` after ``optimize``: iterations, accepted (steps), cost, cost_initial,
    expected_reduction, alpha, regularization, grad_norm, status (converged_gradient,
    converged_cost, max_iterations, line_search_failed, regularization_exceeded,
    backward_pass_failed, nonfinite_linearization, deadline), n_boxqp, n_clamped,
    warm_start_shift, solve_time_s, time_rollout_s, time_linearize_s,
    time_cost_derivatives_s, time_backward_s (seconds).

    Raises (from ``optimize``): ValueError if the model's rollout from x0 is not finite.
    """
    name = "ilqr"
    Settings = ILQRSettings

    def __init__(self, settings: ILQRSettings | None, nx: int, nu: int, u_min: np.ndarray,
                 u_max: np.ndarray, dt: float):
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        # Load the compiled kernels now (the node constructs planners at configure), so no
        # optimize call compiles or loads machine code.
        self.warm_up_s = warm_up()
        self._no_xbar = np.zeros((0, self.nx))          # the open-loop rollout's feedback
        self._no_K = np.zeros((0, self.nu, self.nx))    # arguments (unused by the kernel)
        # (T, nu) lower and upper action bounds of the solve under way (action_bounds);
        # None outside optimize: the action limits.
        self._bounds: tuple[np.ndarray, np.ndarray] | None = None

    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        super().reset(horizon, initial_actions)
        self._K: np.ndarray | None = None          # (T, nu, nx) gains of the nominal
        self._cov: np.ndarray | None = None        # (T, nu, nu)
        self._mu = float(self.settings.mu_init)
        self._dmu = 1.0
        # The backward-pass workspace holds no state between solves: kept across resets.
        self._bp: BackwardPass | None = getattr(self, "_bp", None)

    def _on_warm_start(self) -> None:
        self._K = None
        self._cov = None

    # -- regularisation schedule (Tassa et al. 2012, Sec. II-F) --------------------------
    def _increase_mu(self) -> None:
        f, s = self.settings.mu_factor, self.settings
        self._dmu = max(self._dmu * f, f)
        self._mu = max(self._mu * self._dmu, s.mu_min)

    def _decrease_mu(self) -> None:
        f, s = self.settings.mu_factor, self.settings
        self._dmu = min(self._dmu / f, 1.0 / f)
        self._mu = self._mu * self._dmu if self._mu * self._dmu > s.mu_min else 0.0

    @property
    def regularization(self) -> float:
        """Current Levenberg-Marquardt regularisation mu."""
        return self._mu

    # -- rollout ---------------------------------------------------------------------------
    def _affine_dynamics(self, model: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """(A, B, c) as C-contiguous float64 arrays if the model declares time-invariant
        affine dynamics x' = A x + B u + c through an optional ``affine_dynamics()`` method
        (then the rollouts are one compiled call), else None (rollouts call ``predict``)."""
        f = None if getattr(model, "time_varying", False) else getattr(
            model, "affine_dynamics", None)
        if f is None:
            return None
        abc = f()
        if abc is None:
            return None
        nx, nu = self.nx, self.nu
        A, B, c = (as_f64(a) for a in abc)
        if A.shape != (nx, nx) or B.shape != (nx, nu) or c.shape != (nx,):
            raise ValueError(f"{self.name}: model.affine_dynamics() returned A {A.shape}, "
                             f"B {B.shape}, c {c.shape}; expected ({nx}, {nx}), ({nx}, {nu}), "
                             f"({nx},)")
        return A, B, c

    def _mlp_dynamics(self, model: Any) -> tuple | None:
        """The arguments of :func:`~mbrl_ros.core.lqr.rollout.mlp_rollout_kernel` if the
        model offers its mean as an MLP ensemble through an optional ``mlp_dynamics()``
        method (the ensemble without sin/cos inputs), else None."""
        f = None if getattr(model, "time_varying", False) else getattr(
            model, "mlp_dynamics", None)
        m = f() if f is not None else None
        if m is None:
            return None
        nx, nu = self.nx, self.nu
        W0 = as_f64(m.W0)
        E, n_in, H = W0.shape if W0.ndim == 3 else (0, 0, 0)
        L = np.shape(m.Wh)[1] if np.ndim(m.Wh) == 4 else -1
        arrays = dict(x_mean=(nx,), u_mean=(nu,), W0=(E, nx + nu, H), b0=(E, H),
                      Wh=(E, L, H, H), bh=(E, L, H), WL=(E, H, nx), c=(nx,),
                      lin=(nx + nu, nx))
        bad = {k: np.shape(getattr(m, k)) for k, shape in arrays.items()
               if np.shape(getattr(m, k)) != shape}
        if bad or E < 1 or m.activation not in MLP_ACTIVATIONS:
            raise ValueError(f"{self.name}: model.mlp_dynamics() returned arrays of shapes "
                             f"{bad} (expected {arrays} for nx={nx}, nu={nu}) or activation "
                             f"{m.activation!r} (one of {sorted(MLP_ACTIVATIONS)})")
        return (*(as_f64(getattr(m, k)) for k in arrays), MLP_ACTIVATIONS[m.activation])

    def _kernel_dynamics(self, model: Any) -> tuple | None:
        """The arguments of :func:`~mbrl_ros.core.lqr.rollout.kernel_rollout_kernel` if the
        model offers its mean as a kernel expansion through an optional
        ``kernel_dynamics()`` method (the GP) with at most ``compiled_gp_max_centers``
        kernel rows per step, else None."""
        f = None if getattr(model, "time_varying", False) else getattr(
            model, "kernel_dynamics", None)
        m = f() if f is not None else None
        if m is None or m.alpha.size > self.settings.compiled_gp_max_centers:
            return None
        nx, nu = self.nx, self.nu
        Q, n = np.shape(m.alpha)
        n_in = nx + nu
        arrays = dict(in_mean=(n_in,), in_istd=(n_in,), prior_W=(n_in, nx), prior_c=(nx,),
                      w=(Q, n_in), mix=(Q, nx), out_std=(nx,), out_mean=(nx,))
        bad = {k: np.shape(getattr(m, k)) for k, shape in arrays.items()
               if np.shape(getattr(m, k)) != shape}
        if np.shape(m.centers) not in ((1, n, n_in), (Q, n, n_in)):
            bad["centers"] = np.shape(m.centers)
        if bad or m.kernel not in GP_KERNELS:
            raise ValueError(f"{self.name}: model.kernel_dynamics() returned arrays of "
                             f"shapes {bad} (expected {arrays}, centers (1 or {Q}, {n}, "
                             f"{n_in})) or kernel {m.kernel!r} (one of {sorted(GP_KERNELS)})")
        return (as_f64(m.in_mean), as_f64(m.in_istd), as_f64(m.prior_W), as_f64(m.prior_c),
                as_f64(m.centers), as_f64(m.w), as_f64(m.alpha), as_f64(m.mix),
                GP_KERNELS[m.kernel], as_f64(m.out_std), as_f64(m.out_mean))

    def _fast_dynamics(self, model: Any) -> tuple[str, tuple] | None:
        """("affine", (A, B, c)), ("mlp", kernel arguments) or ("kernel", kernel
        arguments) for the compiled rollouts, or None (rollouts through ``predict``)."""
        affine = self._affine_dynamics(model)
        if affine is not None:
            return "affine", affine
        mlp = self._mlp_dynamics(model)
        if mlp is not None:
            return "mlp", mlp
        kernel = self._kernel_dynamics(model)
        return ("kernel", kernel) if kernel is not None else None

    def _line_search_groups(self, model: Any, n: int) -> list[slice]:
        """The step sizes' order as batches of one rollout each (the first accepted step
        size is the same whatever the batches): 'always' all in one; 'never' one by one;
        'auto' one by one for models that are not vectorized (a row costs the same alone or
        batched) and for the compiled MLP rollout (arithmetic-bound: nine rows cost nine),
        all in one for a vectorized affine model's compiled rollout, and else -- models
        rolled out by a batched ``predict`` -- the full step first (in MPC it is usually
        accepted, and a row of a GP costs several times less than nine), then the rest in
        one batch."""
        mode = self.settings.parallel_line_search
        fast = self._fast[1][0] if getattr(self, "_fast", None) and self._fast[1] else None
        vectorized = bool(getattr(model, "vectorized", False))
        if mode == "always" or (mode == "auto" and vectorized and fast == "affine"):
            return [slice(0, n)]
        if mode == "never" or fast in ("mlp", "kernel") or not vectorized:
            return [slice(i, i + 1) for i in range(n)]
        return [slice(0, 1), slice(1, n)] if n > 1 else [slice(0, 1)]

    def _rollout(self, model: Any, x0: np.ndarray, ubar: np.ndarray,
                 xbar: np.ndarray | None = None, K: np.ndarray | None = None,
                 kff: np.ndarray | None = None, alphas: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Closed-loop rollout of u = clip(ubar + alpha kff + K (x - xbar)) for each alpha,
        all alphas as one batch of the model.

        Returns:
            xs (A, T+1, nx), us (A, T, nu); A = len(alphas) (1 if None).
        """
        T = ubar.shape[0]
        if kff is None or alphas is None:
            U = ubar[None].copy()
        else:
            U = ubar[None] + alphas[:, None, None] * kff[None]
        A = U.shape[0]
        if self._bounds is not None:
            lo, hi = self._bounds
        else:
            lo = np.ascontiguousarray(np.broadcast_to(self.u_min, (T, self.nu)))
            hi = np.ascontiguousarray(np.broadcast_to(self.u_max, (T, self.nu)))
        cached = getattr(self, "_fast", None)
        fast = cached[1] if cached is not None and cached[0] is model \
            else self._fast_dynamics(model)
        if fast is not None:
            xs = np.empty((A, T + 1, self.nx))
            fb = K is not None
            U = as_f64(U)      # clipped in place by the kernel
            kernel = {"affine": affine_rollout_kernel, "mlp": mlp_rollout_kernel,
                      "kernel": kernel_rollout_kernel}[fast[0]]
            kernel(*fast[1], as_f64(x0), U, as_f64(xbar) if fb else self._no_xbar,
                   as_f64(K) if fb else self._no_K, fb, lo, hi, xs)
            return xs, U
        xs = np.empty((A, T + 1, self.nx))
        xs[:, 0] = x0
        x = xs[:, 0]
        # np.clip's Python wrapper costs more than the two ufuncs on (A, nu) arrays.
        clip_lo, clip_hi = bool(np.isfinite(lo).any()), bool(np.isfinite(hi).any())
        maximum, minimum = np.maximum, np.minimum
        tv = bool(getattr(model, "time_varying", False))
        # The mean is all a rollout needs: a model that can skip its variance (the GP)
        # offers predict_mean.
        mean_only = None if tv else getattr(model, "predict_mean", None)
        predict = model.predict
        # A diverging candidate yields inf/NaN, which the cost turns into a rejection.
        with np.errstate(invalid="ignore", over="ignore"):
            for t in range(T):
                u = U[:, t]
                if K is not None:
                    u += (x - xbar[t]) @ K[t].T
                if clip_lo:
                    maximum(u, lo[t], out=u)
                if clip_hi:
                    minimum(u, hi[t], out=u)
                if mean_only is not None:
                    x = mean_only(x, u)
                else:
                    x = predict(x, u, t)[0] if tv else predict(x, u)[0]
                xs[:, t + 1] = x
        return xs, U

    def _cost(self, cost: Any, xs: np.ndarray, us: np.ndarray) -> np.ndarray:
        """Total cost of A trajectories xs (A, T+1, nx), us (A, T, nu) -> (A,); inf for
        non-finite rollouts."""
        # Diverged line-search candidates are expected; they are rejected via inf below.
        with np.errstate(invalid="ignore", over="ignore"):
            if xs.shape[0] == 1:
                J = np.array([cost.total(xs[0], us[0])])
            else:
                J = np.asarray(cost.stage_batch(xs[:, :-1], us)
                               + cost.terminal_batch(xs[:, -1]), dtype=np.float64)
        J[~np.isfinite(J) | ~np.isfinite(xs).all(axis=(1, 2))] = np.inf
        return J

    # -- planning ------------------------------------------------------------------------------
    def optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any
                 ) -> LinearGaussianPolicy:
        """Run up to ``max_iterations`` iLQR iterations from x0 (nx,) at time t0 [s].

        Args:
            x0: (nx,) current state.
            t0: current time [s] (step 0 of the returned policy).
            model: a DynamicsModel with ``predict`` and ``linearize`` at step ``dt``.
            cost: a :class:`~mbrl_ros.core.costs.quadratic.Cost`.

        Returns:
            The :class:`LinearGaussianPolicy` of the new nominal.

        Raises:
            ValueError: the model's rollout from x0 is not finite even open loop.
        """
        s = self.settings
        T, nx, nu = self.horizon, self.nx, self.nu
        t_start = time.perf_counter()
        x0 = np.asarray(x0, dtype=np.float64).reshape(nx)
        timings = dict(time_rollout_s=0.0, time_linearize_s=0.0,
                       time_cost_derivatives_s=0.0, time_backward_s=0.0)

        # The model's affine or MLP form (if any), read once per call for all rollouts.
        self._fast = (model, self._fast_dynamics(model))
        # The action limits, narrowed where the effort rate cannot reach (action_bounds).
        self._bounds = lo, hi = self.action_bounds(t0)
        # Jacobians without the model's covariance where it offers that (unused here).
        linearize = getattr(model, "linearize_mean", None) or model.linearize
        us, shift = self._initial_actions(t0)
        K = shift_trajectory(self._K, shift)
        cov = shift_trajectory(self._cov, shift)
        xbar = shift_trajectory(self._xs, shift)
        tic = time.perf_counter()
        if K is not None and xbar is not None:
            xs_a, us_a = self._rollout(model, x0, us, xbar, K)
        else:
            xs_a, us_a = self._rollout(model, x0, us)
        timings["time_rollout_s"] += time.perf_counter() - tic
        xs, us = xs_a[0], us_a[0]
        J = float(self._cost(cost, xs_a, us_a)[0])
        if not np.isfinite(J):
            # The previous policy diverges from this state: restart open loop.
            xs_a, us_a = self._rollout(model, x0, us)
            xs, us = xs_a[0], us_a[0]
            J = float(self._cost(cost, xs_a, us_a)[0])
            K = cov = None
        if not np.isfinite(J):
            self._fast = self._bounds = None
            raise ValueError(f"{self.name}: the model's rollout (or its cost) from x0 = "
                             f"{x0.tolist()} is not finite even open loop; the model is "
                             "unusable from this state")
        J_initial = J

        if self._bp is None or self._bp.T != T:
            self._bp = BackwardPass(T, nx, nu)
        bp = self._bp
        alphas = np.asarray(s.line_search_alphas, dtype=np.float64)
        has_limits = s.box_qp and bool(np.isfinite(lo).any() or np.isfinite(hi).any())
        status = "max_iterations"
        iterations = accepted = 0
        alpha = 0.0
        expected = 0.0
        grad_norm = float("nan")
        n_boxqp = n_clamped = 0
        last: BackwardResult | None = None
        for _ in range(s.max_iterations):
            if self.out_of_time(t_start, iterations):     # the controller's deadline
                status = "deadline"
                break
            iterations += 1
            tic = time.perf_counter()
            lin = linearize(xs[:T], us)
            toc = time.perf_counter()
            if not (np.isfinite(lin.fx).all() and np.isfinite(lin.fu).all()):
                # Regularisation cannot repair NaN Jacobians; keep the current plan.
                timings["time_linearize_s"] += toc - tic
                status = "nonfinite_linearization"
                break
            lx, lu, lxx, luu, lux = cost.stage_derivatives(xs[:T], us)
            lfx, lfxx = cost.terminal_derivatives(xs[T])
            bp.prepare(lin.fx, lin.fu, lx, lu, lxx, luu, lux, lfx, lfxx)
            tac = time.perf_counter()
            timings["time_linearize_s"] += toc - tic
            timings["time_cost_derivatives_s"] += tac - toc
            du_lo = lo - us if has_limits else None
            du_hi = hi - us if has_limits else None
            res: BackwardResult | int = -1
            for _ in range(s.max_regularization_iterations):
                res = bp.run(self._mu, du_lo, du_hi)
                if isinstance(res, BackwardResult):
                    break
                self._increase_mu()
                if self._mu > s.mu_max:
                    break
            timings["time_backward_s"] += time.perf_counter() - tac
            if not isinstance(res, BackwardResult):
                status = "backward_pass_failed"
                break
            K = res.K
            last = res
            n_boxqp, n_clamped = res.n_boxqp, res.n_clamped
            grad_norm = float(np.mean(np.max(np.abs(res.k) / (np.abs(us) + 1.0), axis=1)))
            if grad_norm < s.tol_grad and self._mu < 1e-5:
                self._decrease_mu()
                status = "converged_gradient"
                break

            tic = time.perf_counter()
            accepted_step = False
            dV = res.dV
            for group in self._line_search_groups(model, len(alphas)):
                xs_a, us_a = self._rollout(model, x0, us, xs, K, res.k, alphas[group])
                Js = self._cost(cost, xs_a, us_a)
                for i, a in enumerate(alphas[group]):
                    if self._accept(J, Js[i], a, dV):
                        accepted_step, alpha = True, float(a)
                        xs_new, us_new, J_new = xs_a[i], us_a[i], float(Js[i])
                        break
                if accepted_step:
                    break
            timings["time_rollout_s"] += time.perf_counter() - tic
            if not accepted_step:
                self._increase_mu()
                if self._mu > s.mu_max:
                    status = "regularization_exceeded"
                    break
                status = "line_search_failed"
                continue
            accepted += 1
            expected = float(-alpha * (dV[0] + alpha * dV[1]))
            self._decrease_mu()
            dJ = J - J_new
            xs, us, J = xs_new, us_new, J_new
            status = "max_iterations"
            if dJ < s.tol_cost * max(abs(J), 1e-12):
                status = "converged_cost"
                break

        if last is not None:
            cov = _pd_inverse(last.Quu_reg) if s.policy_covariance else None
        if K is None:
            # No backward pass succeeded and nothing to reuse: open-loop policy.
            K = np.zeros((T, nu, nx))
            cov = None
        self._fast = self._bounds = None
        self._xs, self._us, self._K, self._cov = xs, us, K, cov
        self._t_nominal = float(t0)
        self.stats = dict(iterations=iterations, accepted=accepted, cost=J,
                          cost_initial=J_initial, expected_reduction=expected, alpha=alpha,
                          regularization=self._mu, grad_norm=grad_norm, status=status,
                          n_boxqp=n_boxqp, n_clamped=n_clamped, warm_start_shift=shift,
                          solve_time_s=time.perf_counter() - t_start, **timings)
        # The plan's own rollouts keep the full gains; only the executed feedback is scaled.
        scale = s.feedback_scale
        return LinearGaussianPolicy(K=K if scale == 1.0 else K * scale, k=us, xbar=xs[:T],
                                    cov=cov, t0=t0, dt=self.dt, u_min=self.u_min,
                                    u_max=self.u_max)

    def _accept(self, J: float, J_new: float, alpha: float, dV: np.ndarray) -> bool:
        """Actual vs expected reduction test (Tassa's iLQG.m): z = dJ / expected must
        exceed ``min_reduction_ratio``; when the model expects no reduction, any decrease
        is accepted."""
        if not np.isfinite(J_new):
            return False
        dJ = J - J_new
        expected = -alpha * (dV[0] + alpha * dV[1])
        if expected > 0:
            return dJ / expected > self.settings.min_reduction_ratio
        return dJ > 0
