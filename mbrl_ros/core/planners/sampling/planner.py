"""The part of ``optimize`` both sampling planners share (:class:`SamplingPlanner`).

Warm start from the shifted previous plan (the appended steps hold its final configuration,
:func:`.rollout.hold_action`), torch threads, no-grad, the seeded generator, the mean-action
rollout of the final plan (``xbar`` of the returned
:class:`~mbrl_ros.core.policies.linear_gaussian.LinearGaussianPolicy`: open loop, K = 0,
or with ``feedback: lqr`` TV-LQR gains along it from the Riccati sweep of
:mod:`mbrl_ros.core.lqr`), its cost and the model's disagreement along it; with
``refine: newton`` (the default) one line-searched Gauss-Newton step on the sampled plan
first (the same sweep), whose line search also yields the mean rollout of the returned
plan.

Why ``newton`` is the default: near the goal the cost's slope is small against the cost
spread the sampling noise causes, so the sample average stops short of the target; the
Newton step holds what iLQR holds on the same model. And progress per replan no longer
depends on the number of samples: with slow replans (a loaded machine) MPPI with it still
reaches after a target change, without it it does not. Under a deadline the sample budget
shrinks the samples, never the Newton step.

Why ``feedback: lqr`` is the default: in real time a plan takes over one solve time after
its state and is played until the next one arrives; open loop (K = 0) the arm drifts off
it meanwhile and MPPI stopped short of the target where iLQR (which returns its gains)
reached it; with the gains MPPI reaches it too, also beside CPU hogs. In lockstep
replanning every step the gains change nothing (the plan starts at the measured state).

Measurements: BENCHMARKS.md, Session 7, "Sampling MPC without offset, and under two CPU
hogs", and "Figures moved out of docstrings (issue 13)".
"""
from __future__ import annotations

import math
import time
from abc import abstractmethod
from typing import Any

import numpy as np
import torch

from mbrl_ros.core.lqr import BackwardPass, BackwardResult, warm_up
from mbrl_ros.core.models.base import offers_linearization
from mbrl_ros.core.planners.base import Planner
from mbrl_ros.core.planners.sampling.budget import SampleBudget
from mbrl_ros.core.planners.sampling.noise import colored_noise
from mbrl_ros.core.planners.sampling.rollout import RolloutEngine, hold_action
from mbrl_ros.core.planners.sampling.settings import DTYPES, SamplingSettings
from mbrl_ros.core.policies.linear_gaussian import LinearGaussianPolicy

__all__ = ["REFINE_ALPHAS", "SamplingPlanner"]

# Step sizes of the refinement's line search (one batched rollout); 0 keeps the plan. Down
# to 1/64: over a learned arm7 ensemble the full step was rejected in most replans and
# 1/8-1/64 accepted (BENCHMARKS.md, Session 11).
REFINE_ALPHAS = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0)


class SamplingPlanner(Planner):
    """Base of the sampling planners: subclasses implement :meth:`_improve`.

    ``optimize`` takes the previous plan shifted by the elapsed time (or the zero action
    clipped into the limits), lets the subclass improve it with batched rollouts, rolls the
    result out with the model's mean prediction and returns it as a
    :class:`LinearGaussianPolicy` (``xbar`` = the mean rollout, no covariance; K = 0, or the
    TV-LQR gains along it with ``feedback: lqr``).

    ``stats`` after ``optimize`` (subclasses add their own): cost (of the returned plan
    under the mean rollout, or of the sample-average states without ``nominal_rollout``),
    warm_start_shift (steps), warm_start_fill (the mode used for the appended steps),
    model_calls, rows_per_call, with ``refine: newton`` refine_alpha (the first step's
    size), refine_steps (steps that lowered the cost), refine_stopped ('deadline' if the
    controller's deadline ended the steps early, else '') and time_refine_s, with ``feedback:
    lqr`` feedback ('lqr', or 'none' if the linearisation was not finite or the sweep
    failed) and time_feedback_s,
    solve_time_s, time_rollout_s (sample rollouts), time_nominal_s (mean rollout and
    disagreement) [s], status, and when the model has ``uncertainty`` (numpy, e.g. the
    ensemble's normalised member variance) or ``member_means`` (torch; then the variance
    of the member means averaged over state dimensions, state units squared):
    uncertainty_source, uncertainty_first, uncertainty_mean, uncertainty_max -- the
    disagreement along the returned plan at its first step, on average and at its worst.
    :attr:`plan_uncertainty` holds the (T,) values and :attr:`initial_actions` the (T, nu)
    actions the last optimisation started from.
    """

    Settings = SamplingSettings

    def __init__(self, settings: Any, nx: int, nu: int, u_min: np.ndarray,
                 u_max: np.ndarray, dt: float):
        super().__init__(settings, nx, nu, u_min, u_max, dt)
        self.dtype = DTYPES[self.settings.dtype]
        self._engine = RolloutEngine(self.nx, self.nu, self.dtype)
        self._bounds = self.action_bounds(0.0)      # (T, nu) each; set by every optimize
        self._lo = torch.as_tensor(self._bounds[0], dtype=self.dtype)
        self._hi = torch.as_tensor(self._bounds[1], dtype=self.dtype)
        # an effort rate and a last action are known: samples are projected onto the
        # rate step by step (project_rate from time _t0)
        self._chained, self._t0 = False, 0.0
        warm_up()   # the compiled Riccati sweep (feedback: lqr, refine: newton), not in a loop

    def reset(self, horizon: int, initial_actions: np.ndarray | None = None) -> None:
        super().reset(horizon, initial_actions)
        # Re-seeded so that a reset planner repeats its plans exactly.
        self._generator = torch.Generator().manual_seed(int(self.settings.seed))
        self.plan_uncertainty: np.ndarray | None = None
        self.initial_actions: np.ndarray | None = None
        self._fill: np.ndarray | None = None
        self._bp: BackwardPass | None = None
        self._budget: SampleBudget | None = None
        self._n = self._configured_samples()

    def _configured_samples(self) -> int:
        """The configured number of sampled sequences per iteration (MPPI ``samples``, CEM
        ``population``)."""
        return int(self.settings.samples)

    def _sample_count(self) -> int:
        """Sequences to sample in this replan: the configured count, or with a deadline
        and ``adapt_samples`` the :class:`SampleBudget`'s."""
        s = self.settings
        n_max = self._configured_samples()
        if self.deadline is None or not s.adapt_samples:
            return n_max
        if self._budget is None:
            self._budget = SampleBudget(n_max, int(s.min_samples), float(s.deadline_fraction))
        else:
            self._budget.configure(n_max, int(s.min_samples), float(s.deadline_fraction))
        return self._budget.n

    def _appended(self, shift: int) -> int:
        """Number of steps appended at the end when the plan is shifted by ``shift``
        (:func:`~mbrl_ros.core.planners.base.shift_trajectory` keeps one row)."""
        return min(shift, self.horizon - 1)

    def _tail_fill(self, model: Any, shift: int) -> tuple[np.ndarray | None, str]:
        """The action (nu,) for the steps appended to the shifted plan (None: repeat the
        last one, as the shift does) and the ``warm_start_fill`` mode actually used."""
        mode = self.settings.warm_start_fill
        if shift <= 0 or self._us is None or mode == "repeat":
            return None, "repeat"
        if mode == "zero":
            return self.clip(np.zeros(self.nu)), mode
        if self._xs is None:          # warm-started from other actions: no final state
            return None, "repeat"
        with np.errstate(invalid="ignore", over="ignore"):
            u = hold_action(model, self._xs[-1], self._us[-1], self.u_min, self.u_max)
        return (None, "repeat") if u is None else (u, mode)

    def _clamp(self, U: torch.Tensor) -> torch.Tensor:
        """Action sequences U (..., T, nu) within the bounds and, with an effort rate and a
        last action, projected onto the rate step by step (:meth:`project_rate`), so a
        sample is a sequence the robot's command path can follow -- and so is their
        weighted average. The exact chain, not only :meth:`action_bounds`' outer box: MPPI
        on arm7 behind 500 N·m/s did not reach with the box alone (it does with the
        chain)."""
        if not self._chained:
            return torch.clamp(U, self._lo, self._hi)
        out = self.project_rate(U.detach().numpy().astype(np.float64), self._t0,
                                self._bounds)
        return torch.from_numpy(out).to(U.dtype)

    def _noise(self, n: int, T: int) -> torch.Tensor:
        return colored_noise(n, T, self.nu, float(self.settings.noise_beta), self._generator,
                             self.dtype)

    def _evaluate(self, model: Any, cost: Any, x0: np.ndarray, U: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Total cost (N,) of the rollouts of U (N, T, nu) (+inf if not finite) and their
        states (T+1, N', nx) (a buffer reused by the next call; rows N.. are padding)."""
        s = self.settings
        return self._engine.run(model, cost, x0, U, s.propagation, self._generator,
                                s.aleatoric)

    @abstractmethod
    def _improve(self, x0: np.ndarray, U: torch.Tensor, model: Any, cost: Any
                 ) -> tuple[torch.Tensor, dict[str, Any]]:
        """Improve the plan U (T, nu) (clipped) from x0 (nx,).

        Returns:
            The new plan (T, nu) and the planner's own stats, including 'any_finite'
            (bool: some sampled rollout had a finite cost), 'states' ((T+1, nx) tensor, the
            sample-average state estimate used when ``nominal_rollout`` is false, or None)
            and optionally 'status'.
        """

    def optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any
                 ) -> LinearGaussianPolicy:
        """Improve the plan from x0 (nx,) at time t0 [s] and return it as a policy.

        Args:
            x0: (nx,) current state.
            t0: current time [s] (step 0 of the returned policy).
            model: a DynamicsModel at step ``dt``; torch models (``propagate``) are rolled
                out in torch, others through ``predict``.
            cost: a :class:`~mbrl_ros.core.costs.quadratic.Cost` with torch batch support.

        Returns:
            A :class:`LinearGaussianPolicy` over the new plan (K = 0 unless ``feedback`` is
            'lqr' and the nominal rollout is finite).

        Raises:
            ValueError: x0 is not finite, or every sampled rollout (or its cost) was
                non-finite, so the model is unusable from this state.
        """
        # Every torch call of the replan under the configured threads: one call outside
        # them right after a switch back (the tail fill's) took 35 ms instead of 0.7 ms
        # over the arm7 ensemble, the thread pool re-forming (BENCHMARKS.md, Session 11).
        threads, want = torch.get_num_threads(), int(self.settings.threads)
        if want > 0 and want != threads:
            torch.set_num_threads(want)
        try:
            return self._optimize(x0, t0, model, cost)
        finally:
            if want > 0 and want != threads:
                torch.set_num_threads(threads)

    def _optimize(self, x0: np.ndarray, t0: float, model: Any, cost: Any
                  ) -> LinearGaussianPolicy:
        s = self.settings
        t_start = time.perf_counter()
        x0 = np.asarray(x0, dtype=np.float64).reshape(self.nx)
        if not np.all(np.isfinite(x0)):
            raise ValueError(f"{self.name}: x0 must be finite, got {x0.tolist()}")
        # The action limits, narrowed where the effort rate cannot reach (action_bounds):
        # every sample, the Newton step and the gains' box stay within them.
        self._bounds = lo, hi = self.action_bounds(t0)
        self._lo = torch.as_tensor(lo, dtype=self.dtype)
        self._hi = torch.as_tensor(hi, dtype=self.dtype)
        self._chained, self._t0 = self.rate_steps(t0) is not None, float(t0)
        engine = self._engine
        engine.model_calls = 0
        # The subclasses' _improve samples self._n sequences per iteration.
        self._n = self._sample_count()
        us0, shift = self._initial_actions(t0)
        self._shift = shift
        self._fill, fill_mode = self._tail_fill(model, shift)
        if self._fill is not None:
            us0[us0.shape[0] - self._appended(shift):] = self._fill
        self.initial_actions = us0.copy()
        with torch.no_grad():
            tic = time.perf_counter()
            U, stats = self._improve(x0, torch.as_tensor(us0, dtype=self.dtype), model,
                                     cost)
            toc = time.perf_counter()
            if not stats.pop("any_finite"):
                raise ValueError(
                    f"{self.name}: every sampled rollout from x0 = {x0.tolist()} (or its "
                    "cost) is non-finite; the model is unusable from this state")
            us = self._clamp(U).to(torch.float64).numpy()
            states = stats.pop("states", None)
            xs, unc = None, None
            nominal_from = time.perf_counter()
            if s.refine == "newton":
                steps, stopped = [], ""
                for _ in range(int(s.refine_iterations)):
                    us, alpha, xs = self._refine(model, cost, x0, us)
                    steps.append(alpha)
                    if alpha == 0.0:   # no lower cost along this step: the next is alike
                        break
                    # with the controller's deadline, no step that would end past it (the
                    # first always runs, as iLQR's first iteration)
                    if len(steps) < s.refine_iterations and \
                            self.out_of_time(t_start, len(steps), rounds_started=toc):
                        stopped = "deadline"
                        break
                if any(steps):
                    states = None      # the sample average belongs to the old plan
                if alpha == 0.0:       # xs: the mean rollout of the plan returned
                    unc = engine.mean_disagreement
                nominal_from = time.perf_counter()
                stats.update(refine_alpha=steps[0],
                             refine_steps=sum(a != 0.0 for a in steps),
                             refine_stopped=stopped, time_refine_s=nominal_from - toc)
            if xs is not None:
                pass    # the refinement rolled the returned plan out with the mean
            elif s.nominal_rollout or states is None:
                xs = engine.mean_rollout(model, x0, us)
                unc = engine.mean_disagreement
            else:
                xs = states.to(torch.float64).numpy().copy()
                xs[0] = x0
                unc = None
            if unc is not None and np.all(np.isfinite(xs[:self.horizon])):
                source = "uncertainty"     # model.uncertainty, from the mean rollout
            else:
                unc, source = self._disagreement(model, xs, us)
            tac = time.perf_counter()
        with np.errstate(invalid="ignore", over="ignore"):
            J = float(cost.total(xs, us))
        status = stats.pop("status", "ok")
        xbar = xs[:self.horizon]
        if not np.all(np.isfinite(xs)):
            # The mean model diverges along the plan (samples did not): keep the actions;
            # xbar does not enter the actions (K = 0) but must be finite for the policy.
            status = "nominal_rollout_nonfinite"
            J = math.inf
            xbar = _hold_last_finite(xbar)
        self._xs, self._us, self._t_nominal = xs, us, float(t0)
        self.plan_uncertainty = unc
        self.stats = dict(stats, cost=J if math.isfinite(J) else math.inf,
                          warm_start_shift=shift, warm_start_fill=fill_mode,
                          model_calls=engine.model_calls,
                          rows_per_call=engine.rows, status=status,
                          time_rollout_s=toc - tic, time_nominal_s=tac - nominal_from)
        if unc is not None:
            self.stats.update(uncertainty_source=source, uncertainty_first=float(unc[0]),
                              uncertainty_mean=float(np.mean(unc)),
                              uncertainty_max=float(np.max(unc)))
        K = np.zeros((self.horizon, self.nu, self.nx))
        if s.feedback == "lqr" and status == "ok":
            fb_start = time.perf_counter()     # not tic: the budget below needs it
            gains = self._feedback_gains(model, cost, xs, us)
            self.stats.update(time_feedback_s=time.perf_counter() - fb_start,
                              feedback="lqr" if gains is not None else "none")
            if gains is not None:
                K = gains
        self.stats["solve_time_s"] = time.perf_counter() - t_start
        self.stats["samples"] = self._n
        if self._budget is not None and self.deadline is not None and s.adapt_samples:
            self.stats["samples_next"] = self._budget.update(
                self._n, self.stats["solve_time_s"], toc - tic, self.deadline)
        return LinearGaussianPolicy(K=K, k=us, xbar=xbar, cov=None, t0=t0, dt=self.dt,
                                    u_min=self.u_min, u_max=self.u_max)

    def _sweep(self, model: Any, cost: Any, xs: np.ndarray, us: np.ndarray
               ) -> tuple[BackwardResult, Any] | None:
        """The box-limited Riccati sweep along the plan (xs (T+1, nx), us (T, nu)) and the
        linearisation it used, or None if the linearisation is not finite or no
        regularisation up to 1e6 makes the sweep positive definite."""
        T = self.horizon
        # Jacobians without the model's covariance where it offers that (unused here).
        linearize = getattr(model, "linearize_mean", None) or model.linearize
        with np.errstate(invalid="ignore", over="ignore"):
            lin = linearize(xs[:T], us)
            if not (np.isfinite(lin.fx).all() and np.isfinite(lin.fu).all()):
                return None
            lx, lu, lxx, luu, lux = cost.stage_derivatives(xs[:T], us)
            lfx, lfxx = cost.terminal_derivatives(xs[T])
        if self._bp is None or self._bp.T != T:
            self._bp = BackwardPass(T, self.nx, self.nu)
        self._bp.prepare(lin.fx, lin.fu, lx, lu, lxx, luu, lux, lfx, lfxx)
        mu = 0.0
        while mu <= 1e6:
            res = self._bp.run(mu, self._bounds[0] - us, self._bounds[1] - us)
            if isinstance(res, BackwardResult):
                ok = np.isfinite(res.K).all() and np.isfinite(res.k).all()
                return (res, lin) if ok else None
            mu = max(1e-6, 10.0 * mu)
        return None

    def _refine(self, model: Any, cost: Any, x0: np.ndarray, us: np.ndarray
                ) -> tuple[np.ndarray, float, np.ndarray | None]:
        """One line-searched Gauss-Newton step on the plan us (T, nu) from x0 (``refine:
        newton``).

        Returns:
            The new plan (T, nu), the step size taken (0: the plan unchanged -- also when
            the mean rollout or the linearisation is not finite), and the mean rollout of
            the returned plan (T+1, nx) float64 -- the line search computed it, so
            ``optimize`` needs no nominal rollout of its own -- or None if there is none
            (the mean rollout was not finite).
        """
        T = self.horizon
        xs = self._engine.mean_rollout(model, x0, us)
        if not np.isfinite(xs).all():
            return us, 0.0, None
        if not offers_linearization(model):
            return us, 0.0, xs
        sweep = self._sweep(model, cost, xs, us)
        if sweep is None:
            return us, 0.0, xs
        res, lin = sweep
        # The step as an open-loop action sequence: du_t = k_t + K_t dx_t with dx
        # propagated through the linearisation, so that it can be rolled out in a batch.
        du = np.empty_like(us)
        dx = np.zeros(self.nx)
        for t in range(T):
            du[t] = res.k[t] + res.K[t] @ dx
            dx = lin.fx[t] @ dx + lin.fu[t] @ du[t]
        if not np.isfinite(du).all():
            return us, 0.0, xs
        alphas = np.asarray(REFINE_ALPHAS)
        cand = self._clamp(torch.from_numpy(us[None] + alphas[:, None, None] * du[None])
                           ).numpy()
        rows = self._engine.rows             # stats: the rows of the sampled rollouts
        # float64 candidates: numpy models roll out exactly the actions returned (torch
        # models cast to their own dtype, as mean_rollout does).
        J, states = self._engine.run(model, cost, x0, torch.from_numpy(cand), "expectation",
                                     self._generator)
        self._engine.rows = rows
        i = int(torch.argmin(J))
        if not math.isfinite(float(J[i])) or not float(J[i]) < float(J[-1]):
            return us, 0.0, xs      # no step lowers the cost of the plan (alpha 0, last)
        # The line search's row i is the mean rollout of the plan it returns.
        return cand[i], float(alphas[i]), states[:, i].to(torch.float64).numpy().copy()

    def _feedback_gains(self, model: Any, cost: Any, xs: np.ndarray, us: np.ndarray
                        ) -> np.ndarray | None:
        """TV-LQR gains (T, nu, nx) along the plan (xs (T+1, nx), us (T, nu)), or None if
        the model has no linearisation, it is not finite, or no regularisation up to 1e6
        makes the sweep positive definite."""
        if not offers_linearization(model):
            return None
        sweep = self._sweep(model, cost, xs, us)
        return None if sweep is None else sweep[0].K

    def _disagreement(self, model: Any, xs: np.ndarray, us: np.ndarray
                      ) -> tuple[np.ndarray | None, str]:
        """Model disagreement (T,) along the plan, and where it came from."""
        T = us.shape[0]
        if not np.all(np.isfinite(xs[:T])):
            return None, ""
        if callable(getattr(model, "uncertainty", None)):
            return np.asarray(model.uncertainty(xs[:T], us), dtype=np.float64).reshape(T), \
                "uncertainty"
        if callable(getattr(model, "member_means", None)) and hasattr(model, "torch_dtype"):
            dt = model.torch_dtype
            m = model.member_means(torch.as_tensor(xs[:T], dtype=dt),
                                   torch.as_tensor(us, dtype=dt))          # (E, T, nx)
            return m.var(dim=0, unbiased=False).mean(dim=-1).to(torch.float64).numpy(), \
                "member_means"
        return None, ""


def _hold_last_finite(xs: np.ndarray) -> np.ndarray:
    """Rows of xs (T, nx) from the first non-finite one on replaced by the last finite row
    (the first row is x0, always finite)."""
    out = xs.copy()
    bad = ~np.all(np.isfinite(out), axis=1)
    first = int(np.argmax(bad))
    out[first:] = out[first - 1] if first > 0 else 0.0
    return out
