"""Mirror-descent guided policy search (MDGPS) with M initial conditions.

Montgomery & Levine, "Guided Policy Search via Approximate Mirror Descent" (NIPS 2016),
building on Levine & Abbeel, "Learning Neural Network Policies with Guided Policy Search
under Unknown Dynamics" (NIPS 2014); the iteration follows the authors' reference
implementation (cbfinn/gps ``AlgorithmMDGPS``). One iteration:

1. **Sample** N trajectories of T steps from each condition's linear-Gaussian controller
   p_m(u|x) on an :class:`Environment` (``reset(condition) -> x0``, ``step(u) -> x``).
2. **Dynamics**: add all samples to one GMM prior shared by the conditions and fit each
   condition's time-varying linear-Gaussian dynamics
   (:class:`~mbrl_ros.core.models.tvlg.TVLGModel`).
3. **Policy linearisation**: fit the global policy pi as a linear-Gaussian controller
   around each condition's samples (:mod:`mbrl_ros.core.policies.linearization`).
4. **Step size** (from the second iteration): compare the improvement of the global
   policy that the last C-step predicted with the one that happened, under the Laplace
   (LQG) cost estimate or the sample (Monte-Carlo) costs, and rescale the KL bound
   (cbfinn/gps ``_stepadjust`` / ``_set_new_mult``): with the improvement modelled as
   quadratic in the step, new_mult = predicted / (2 (predicted - actual)), clipped to
   [min_mult, max_mult], and step_mult *= new_mult within [min_step_mult, max_step_mult]
   (:mod:`.gps_step`).
5. **C-step**: p_m <- argmin E[cost] s.t. KL(p_m || pi_m^lin) <= epsilon = kl_step *
   step_mult * T (:func:`~mbrl_ros.core.lqr.kl_step.kl_constrained_update`).
6. **S-step**: train pi on the controllers' mean actions at the sampled states, weighted
   by their precisions (:class:`~mbrl_ros.core.policies.neural.PolicyTrainer`).

On the first iteration the global policy is first trained on the initial controllers, so
the first C-step is measured against something meaningful (as the reference does).

**Conditions with tasks.** A condition is an (initial state, target) pair: with ``tasks``
(M, n_task) -- e.g. each condition's target joint positions -- the global policy is
target-conditioned (its input is [x, task]), each condition's cost pulls toward its own
target, and one network learns to reach all of them (and, with enough conditions, targets in
between).

**Bad cases** the iteration handles rather than crashes on: a C-step that fails for a
condition (no positive-definite solution under badly conditioned fitted dynamics) keeps
that condition's controller (status ``failed``, KL NaN) and halves the next step; a sample
that leaves the
environment's valid region (``env.check(x)`` returns a reason: non-finite, diverging,
beyond the joint limits) is discarded, counted and redrawn (at most
``max_discarded_per_condition`` times, then :class:`GPSError`); a C-step whose KL bound
cannot be met even at the largest eta, or whose KL measured on the next samples exceeds
``kl_sample_limit`` x epsilon, is reported in the record (``warnings``) and halves the step
multiplier; with ``kl_sample_correction`` (off by default: on arm7 it lowered the sample
KL's excess but not the distances, BENCHMARKS.md session 10) each condition's C-step aims
below epsilon by the ratio of sample KL to model KL its last C-step showed
(:mod:`.gps_step`).

**Checkpoints.** :mod:`.gps_checkpoint` writes an :class:`MDGPS`'s state as plain data
(JSON, npz, torch state_dicts) after every iteration and, right after sampling, the pending
samples with the random states, so a resumed run continues at the next iteration without
losing or redrawing samples.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from mbrl_ros.core.algorithms.gps_step import (StepState, adjust_step, kl_corrections,
                                               shrink_step)
from mbrl_ros.core.algorithms.sampler import EnvSampler, Sampler, SamplerError
from mbrl_ros.core.costs.quadratic import Cost
from mbrl_ros.core.lqr.kl_step import (
    CostExpansion,
    TrajOptError,
    TrajOptResult,
    TrajOptSettings,
    kl_constrained_update,
    sample_costs,
    sample_kl,
)
from mbrl_ros.core.models.base import Linearization
from mbrl_ros.core.models.tvlg import TVLGModel, TVLGSettings, initial_state_estimate
from mbrl_ros.core.policies.linear_gaussian import (LinearGaussianPolicy, imitation_targets,
                                                    initial_controller)
from mbrl_ros.core.policies.linearization import PolicyPriorGMM, fit_policy_linearization
from mbrl_ros.core.policies.neural import NeuralPolicy, PolicySettings, PolicyTrainer
from mbrl_ros.core.settings import setting

__all__ = ["Environment", "GPSError", "GPSSettings", "IterationRecord", "MDGPS"]


class GPSError(RuntimeError):
    """An iteration cannot go on (e.g. every redraw of a sample was invalid)."""


@runtime_checkable
class Environment(Protocol):
    """What GPS samples from: a resettable system stepped in fixed control periods.

    Attributes:
        nx, nu: state and action dimensions; dt: control period [s];
        n_conditions: number of initial conditions; u_min, u_max: (nu,) action limits.
    """
    nx: int
    nu: int
    dt: float
    n_conditions: int
    u_min: np.ndarray
    u_max: np.ndarray

    def reset(self, condition: int) -> np.ndarray:
        """Start an episode from initial condition ``condition``; returns x0 (nx,)."""
        ...

    def step(self, u: np.ndarray) -> np.ndarray:
        """Apply action u (nu,) for one control period; returns the next state (nx,)."""
        ...


@dataclass(frozen=True)
class GPSSettings:
    """MDGPS hyper-parameters (defaults from cbfinn/gps and its MDGPS MuJoCo example)."""
    horizon: int = setting(50, "time steps T per sample trajectory", unit="steps", low=2,
                           high=100000)
    samples: int = setting(5, "sample trajectories per condition and iteration", low=2,
                           high=10000)
    kl_step: float = setting(1.0, "base KL bound per time step; the C-step bound is "
                             "kl_step * step_mult * T", unit="nats", low=1e-9)
    min_step_mult: float = setting(0.5, "lower bound of the step multiplier", low=1e-9)
    max_step_mult: float = setting(3.0, "upper bound of the step multiplier", low=1e-9)
    min_mult: float = setting(0.1, "smallest change of the multiplier per iteration",
                              low=1e-9, high=1.0)
    max_mult: float = setting(5.0, "largest change of the multiplier per iteration", low=1.0)
    step_rule: str = setting("laplace", "improvement measure of the step adaptation: the "
                             "LQG (Laplace) estimate or the sample costs",
                             choices=("laplace", "mc"))
    init_std: float = setting(1.0, "std of the initial controllers' exploration noise",
                              unit="action units", low=1e-9)
    policy_prior: bool = setting(True, "GMM prior for the global policy's linearisation "
                                 "(else a weak constant prior)")
    policy_prior_samples: int = setting(20, "trajectories the policy prior keeps", low=1)
    policy_prior_min_cluster: int = setting(40, "points per cluster of the policy prior",
                                            low=1)
    policy_prior_max_clusters: int = setting(20, "clusters of the policy prior", low=2)
    evaluate_policy: bool = setting(True, "roll out the global policy's mean from every "
                                    "condition after each S-step (not counted as "
                                    "training interaction)")
    kl_sample_limit: float = setting(2.0, "a C-step whose KL, measured on the next "
                                     "samples, exceeds this times its bound halves the step "
                                     "multiplier", low=1.0)
    kl_sample_correction: bool = setting(False, "aim each C-step at epsilon / r, r = the "
                                         "last KL on the samples / KL under the model "
                                         "(so the bound holds on the system)")
    max_kl_correction: float = setting(10.0, "largest r of kl_sample_correction", low=1.0)
    max_discarded_per_condition: int = setting(20, "invalid samples redrawn per condition "
                                               "and iteration before giving up", low=0)
    seed: int = setting(0, "seed of the exploration noise and the GMM initialisations",
                        low=0)

    def __post_init__(self):
        if self.min_step_mult > self.max_step_mult:
            raise ValueError("min_step_mult must be <= max_step_mult")


@dataclass
class IterationRecord:
    """What one MDGPS iteration did (JSON-able with :meth:`to_json`).

    Costs are trajectory costs (sum of stage costs + terminal). ``cost_lg`` is the mean
    cost of this iteration's samples (drawn from the controllers *before* this C-step);
    ``cost_policy`` / ``policy_final_distance`` come from rolling out the global policy's
    mean after this S-step (None if not evaluated).
    """
    iteration: int
    samples: int                       # trajectories sampled so far
    interaction_seconds: float         # simulated time of those samples [s]
    cost_lg: list[float]
    cost_policy: list[float] | None
    policy_final_distance: list[float] | None
    epsilon: float                     # KL bound of this C-step (sum over T) [nats]
    step_mult: float
    kl: list[float]
    eta: list[float]
    traj_opt_status: list[str]
    predicted_improvement: float | None
    actual_improvement: float | None
    policy_rmse: float                 # S-step imitation error [action units]
    dynamics_rmse: list[float]         # one-step fit error of each TVLG model
    timings: dict[str, float] = field(default_factory=dict)
    # this C-step's KL measured on the states of the next iteration's samples (drawn from
    # its controllers); filled in when those arrive [nats], per condition
    kl_samples: list[float] | None = None
    # r per condition: this C-step bounded the KL under the model by epsilon / r (r = the last
    # C-step's KL on the samples / under the model; 1 without kl_sample_correction)
    kl_correction: list[float] | None = None
    discarded_samples: int = 0         # invalid samples redrawn in this iteration
    discard_reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


class MDGPS:
    """Mirror-descent guided policy search.

    Args:
        env: the :class:`Environment` to sample from.
        cost: one :class:`~mbrl_ros.core.costs.quadratic.Cost` for all conditions, or one
            per condition.
        settings: :class:`GPSSettings`.
        dynamics: settings of the per-condition TVLG models and their shared prior
            (default: cbfinn/gps MuJoCo example values, prior keeping 2 iterations).
        traj_opt: :class:`~mbrl_ros.core.lqr.kl_step.TrajOptSettings`.
        policy: :class:`~mbrl_ros.core.policies.neural.PolicySettings`.
        initial_controllers: one LinearGaussianPolicy per condition (default:
            :func:`~mbrl_ros.core.policies.linear_gaussian.initial_controller` with
            ``settings.init_std``).
        distance: task metric of a final state (nx,) -> float reported per condition for
            the global policy (e.g. the joint-position error), or one such function per
            condition; None: not reported.
        tasks: (M, n_task) task of each condition (e.g. its target joint positions): the
            global policy becomes target-conditioned; None: one policy for the one task.
        sampler: where the samples come from (:class:`~mbrl_ros.core.algorithms.sampler.
            Sampler`; default: an ``EnvSampler`` stepping ``env``; the ROS node sampler
            runs them through the nodes).
    """

    def __init__(self, env: Environment, cost: Cost | Sequence[Cost],
                 settings: GPSSettings | None = None, *,
                 dynamics: TVLGSettings | None = None, traj_opt: TrajOptSettings | None = None,
                 policy: PolicySettings | None = None,
                 initial_controllers: Sequence[LinearGaussianPolicy] | None = None,
                 distance: Callable[[np.ndarray], float] |
                 Sequence[Callable[[np.ndarray], float]] | None = None,
                 tasks: np.ndarray | None = None, sampler: Sampler | None = None):
        self.env = env
        self.settings = s = settings or GPSSettings()
        self.M = M = int(env.n_conditions)
        self.nx, self.nu, self.T, self.dt = int(env.nx), int(env.nu), s.horizon, float(env.dt)
        self.u_min = np.broadcast_to(np.asarray(env.u_min, dtype=np.float64), (self.nu,))
        self.u_max = np.broadcast_to(np.asarray(env.u_max, dtype=np.float64), (self.nu,))
        self.costs = list(cost) if isinstance(cost, (list, tuple)) else [cost] * M
        if len(self.costs) != M:
            raise ValueError(f"need one cost or {M} (one per condition), got {len(self.costs)}")
        self.traj_opt_settings = traj_opt or TrajOptSettings()
        dyn_settings = dynamics or TVLGSettings(
            max_samples=max(20, 2 * M * s.samples), min_samples_per_cluster=40,
            max_clusters=20, seed=s.seed)
        self.models = [TVLGModel(dyn_settings) for _ in range(M)]
        for m in self.models[1:]:          # one prior learns from every condition
            m.prior = self.models[0].prior
        self.prior = self.models[0].prior
        self.tasks = None if tasks is None else np.asarray(tasks, dtype=np.float64).reshape(M, -1)
        if self.tasks is not None and not np.all(np.isfinite(self.tasks)):
            raise ValueError("tasks must be finite")
        self.n_task = 0 if self.tasks is None else int(self.tasks.shape[1])
        self.trainer = PolicyTrainer(self.nx, self.nu, self.u_min, self.u_max, policy,
                                     n_task=self.n_task)
        self.policy_prior = PolicyPriorGMM(
            max(s.policy_prior_samples, M * s.samples), s.policy_prior_min_cluster,
            s.policy_prior_max_clusters) if s.policy_prior else None
        if initial_controllers is None:
            initial_controllers = [initial_controller(self.nx, self.nu, self.T, self.dt,
                                                      s.init_std, self.u_min, self.u_max)
                                   for _ in range(M)]
        if len(initial_controllers) != M or any(c.horizon < self.T or c.cov is None
                                                for c in initial_controllers):
            raise ValueError(f"need {M} initial controllers with >= {self.T} steps and a "
                             "covariance")
        self.controllers = list(initial_controllers)
        self.attach(env, distance, sampler)
        self.eta = [1.0] * M
        self.step_mult = 1.0
        self.rng = np.random.default_rng(s.seed)
        self._gmm_rng = np.random.default_rng(s.seed + 1)
        self.iteration_count = 0
        self.n_samples = 0
        self.interaction_seconds = 0.0
        self.history: list[IterationRecord] = []
        self.last_results: list[TrajOptResult] = []
        self.last_samples: tuple[np.ndarray, np.ndarray] | None = None
        self._prev: StepState | None = None
        self._pending_discards: tuple[int, list[str], float] = (0, [], 0.0)

    def attach(self, env: Environment, distance=None, sampler: Sampler | None = None) -> None:
        """(Re-)attach the environment, the distance metric and the sampler (after
        unpickling a checkpoint, which holds none of them; default sampler: an
        :class:`~mbrl_ros.core.algorithms.sampler.EnvSampler` stepping ``env``)."""
        self.env = env
        self.sampler = sampler if sampler is not None else EnvSampler(
            env, self.u_min, self.u_max, self.settings.max_discarded_per_condition)
        if distance is None or callable(distance):
            self.distances = [distance] * self.M
        else:
            self.distances = list(distance)
            if len(self.distances) != self.M:
                raise ValueError(f"need one distance or {self.M}, got {len(self.distances)}")
        self.distance = distance

    def __getstate__(self):
        """Everything but the environment and the distance metric (a checkpoint;
        re-attach them with :meth:`attach`)."""
        d = dict(self.__dict__)
        d["env"] = None
        d["sampler"] = None
        d["distance"] = None
        d["distances"] = [None] * self.M
        return d

    # ------------------------------------------------------------------ pieces
    @property
    def policy(self) -> NeuralPolicy:
        """The current global policy (numpy snapshot; target-conditioned: unbound)."""
        return self.trainer.policy()

    def policy_for(self, m: int, policy: NeuralPolicy | None = None) -> NeuralPolicy:
        """The global policy bound to condition m's task."""
        policy = policy or self.policy
        return policy if self.tasks is None else policy.with_task(self.tasks[m])

    def _inputs(self, X: np.ndarray, m: int) -> np.ndarray:
        """[x, task_m] rows for states X (..., nx) of condition m."""
        if self.tasks is None:
            return X
        return np.concatenate([X, np.broadcast_to(self.tasks[m], X.shape[:-1]
                                                  + (self.n_task,))], axis=-1)

    def sample(self, controllers: Sequence, n: int, noisy: bool = True
               ) -> tuple[np.ndarray, np.ndarray]:
        """Roll out ``controllers[m]`` n times from every condition m.

        Args:
            controllers: one policy per condition with ``sample(x, t, rng)`` (noisy) or
                ``action(x, t)``.

        Returns:
            X (M, n, T+1, nx) states and U (M, n, T, nu) applied (clipped) actions.
        """
        X = np.empty((self.M, n, self.T + 1, self.nx))
        U = np.empty((self.M, n, self.T, self.nu))
        discarded, reasons, lost = 0, [], 0.0
        for m, ctrl in enumerate(controllers):
            try:
                b = self.sampler.sample(m, ctrl, n, self.T, self.rng, noisy)
            except SamplerError as e:
                raise GPSError(str(e)) from e
            X[m], U[m] = b.X, b.U
            discarded += b.discarded
            reasons += b.reasons
            lost += b.lost
        self._pending_discards = (discarded, reasons, lost)
        return X, U

    def evaluate(self, policy=None) -> tuple[list[float], list[float] | None, np.ndarray]:
        """Deterministic rollout of ``policy`` (default: the global policy) from every
        condition: (costs per condition, final distances or None, X (M, T+1, nx))."""
        policy = policy or self.policy
        X, U = self.sample([self.policy_for(m, policy) for m in range(self.M)], 1, noisy=False)
        costs = [float(sample_costs(self.costs[m], X[m], U[m]).sum()) for m in range(self.M)]
        dist = None if self.distances[0] is None else \
            [float(self.distances[m](X[m, 0, -1])) for m in range(self.M)]
        return costs, dist, X[:, 0]

    def _s_step(self, X: np.ndarray, controllers: Sequence[LinearGaussianPolicy]) -> dict:
        """Train the global policy on the controllers' (clipped) mean actions at the
        sampled states X (M, N, T+1, nx), weighted by their precisions."""
        T = self.T
        xs, us, ps = [], [], []
        for m, c in enumerate(controllers):
            Xm = X[m, :, :T]                                           # (N, T, nx)
            mu, prec = imitation_targets(c, Xm, self.u_min, self.u_max)
            xs.append(self._inputs(Xm, m).reshape(-1, self.nx + self.n_task))
            us.append(mu.reshape(-1, self.nu))
            ps.append(prec.reshape(-1, self.nu, self.nu))
        return self.trainer.train(np.concatenate(xs), np.concatenate(us), np.concatenate(ps))

    def _linearize_policy(self, X: np.ndarray) -> list[LinearGaussianPolicy]:
        """The global policy as a linear-Gaussian controller around each condition's
        samples X (M, N, T+1, nx)."""
        T = self.T
        pol = self.policy
        if self.policy_prior is not None:
            ctx = None if self.tasks is None else np.repeat(self.tasks, X.shape[1], axis=0)
            self.policy_prior.update(X[:, :, :T].reshape(-1, T, self.nx), pol.mean,
                                     rng=self._gmm_rng, context=ctx)
        out = []
        for m in range(self.M):
            Xm = X[m, :, :T]
            pol_mu = self.policy_for(m, pol).mean(Xm.reshape(-1, self.nx)).reshape(
                Xm.shape[0], T, self.nu)
            K, k, S = fit_policy_linearization(Xm, pol_mu, pol.std ** 2, self.policy_prior)
            out.append(LinearGaussianPolicy.from_gps(K, k, Xm.mean(axis=0), S, t0=0.0,
                                                     dt=self.dt, u_min=self.u_min,
                                                     u_max=self.u_max))
        return out

    # ------------------------------------------------------------------ iteration
    def draw_samples(self) -> tuple[np.ndarray, np.ndarray, float, tuple]:
        """This iteration's samples from the current controllers: (X, U, seconds,
        (discarded, reasons, simulated seconds of the discarded ones)); pass them to :meth:`iteration` (a checkpoint can keep them
        in between)."""
        t0 = time.perf_counter()
        X, U = self.sample(self.controllers, self.settings.samples)
        return X, U, time.perf_counter() - t0, self._pending_discards

    def iteration(self, samples: tuple | None = None) -> IterationRecord:
        """Run one MDGPS iteration (sample, fit, C-step, S-step) and return its record.

        Args:
            samples: the result of :meth:`draw_samples` (default: draw them now).
        """
        s = self.settings
        M, T = self.M, self.T
        timings: dict[str, float] = {}
        if samples is None:
            samples = self.draw_samples()
        X, U, sampling_seconds, (discarded, reasons, lost) = samples
        t0 = time.perf_counter()
        warnings: list[str] = []
        self.last_samples = (X, U)
        kl_prev = None
        if self._prev is not None and self._prev.new_ctrl is not None:
            kl_prev = [sample_kl(self._prev.new_ctrl[m], self._prev.pol_lin[m], X[m, :, :T])
                       for m in range(M)]
            rec_prev = self.history[-1] if self.history else None
            if rec_prev is not None:
                rec_prev.kl_samples = [float(k) for k in kl_prev]
        self.n_samples += M * s.samples
        self.interaction_seconds += M * s.samples * T * self.dt + lost
        costs = [sample_costs(self.costs[m], X[m], U[m]) for m in range(M)]
        expansion = [CostExpansion.from_samples(self.costs[m], X[m], U[m]) for m in range(M)]
        timings["sampling"] = sampling_seconds + time.perf_counter() - t0

        t0 = time.perf_counter()
        self.prior.update(X.reshape(-1, T + 1, self.nx), U.reshape(-1, T, self.nu),
                          rng=self._gmm_rng)
        dyn, x0, dyn_rmse = [], [], []
        floor = self.models[0].settings.initial_state_var
        for m in range(M):
            report = self.models[m].fit_trajectories(X[m], U[m])
            mdl = self.models[m]
            dyn.append(Linearization(mdl.fx, mdl.fu, mdl.f0, mdl.cov))
            dyn_rmse.append(float(report.metrics["train_rmse"]))
            # The condition's own initial-state spread: the shared prior's x0 statistics
            # mix all conditions' start states.
            x0.append(initial_state_estimate(X[m, :, 0], floor))
        timings["dynamics"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        if self.trainer.net is None:       # catch the policy up with the initial controllers
            self._s_step(X, self.controllers)
        timings["s_step_initial"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        pol_lin = self._linearize_policy(X)
        timings["policy_linearization"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        cur = StepState(dyn, x0, expansion, pol_lin, None,
                        np.array([c.sum(axis=1).mean() for c in costs]))
        predicted = actual = None
        rec_last = self.history[-1] if self.history else None
        if self._prev is not None:
            before = self.step_mult
            self.step_mult, predicted, actual = adjust_step(self._prev, cur, self.step_mult, s)
            self.step_mult, notes = shrink_step(rec_last, kl_prev, self.step_mult, s, before)
            warnings += notes
        epsilon = s.kl_step * self.step_mult * T
        correction = kl_corrections(rec_last if kl_prev is not None else None, M, s)
        results, new_ctrl, kls, etas, statuses = [], [], [], [], []
        for m in range(M):
            try:
                res = kl_constrained_update(dyn[m], x0[m][0], x0[m][1], expansion[m],
                                            pol_lin[m], epsilon / correction[m], self.eta[m],
                                            self.traj_opt_settings)
            except TrajOptError as e:
                # e.g. no positive-definite Q_uu for any eta under badly conditioned fitted
                # dynamics: this condition keeps its controller for one more iteration.
                warnings.append(f"condition {m}: C-step failed ({e}); it keeps its "
                                "controller and the next step is halved")
                new_ctrl.append(self.controllers[m])
                kls.append(float("nan"))
                etas.append(float(self.eta[m]))
                statuses.append("failed")
                continue
            self.eta[m] = res.eta
            results.append(res)
            new_ctrl.append(res.policy)
            kls.append(float(res.kl))
            etas.append(float(res.eta))
            statuses.append(res.status)
        if len(results) == 0:
            warnings.append("every condition's C-step failed")
        cur.new_ctrl = new_ctrl
        self.last_results = results
        timings["c_step"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        fit = self._s_step(X, new_ctrl)
        timings["s_step"] = time.perf_counter() - t0 + timings.pop("s_step_initial")

        t0 = time.perf_counter()
        cost_pol = dist = None
        if s.evaluate_policy:
            cost_pol, dist, _ = self.evaluate()
        timings["evaluation"] = time.perf_counter() - t0

        self.controllers = new_ctrl
        self._prev = cur
        for m, (st, kl) in enumerate(zip(statuses, kls)):
            if st == "max_eta":
                warnings.append(f"condition {m}: KL bound {epsilon / correction[m]:.3g} not "
                                f"met even at the "
                                f"largest eta (KL {kl:.3g}); the next step is halved")
        self.iteration_count += 1
        rec = IterationRecord(
            iteration=self.iteration_count, samples=self.n_samples,
            interaction_seconds=round(self.interaction_seconds, 9),
            cost_lg=[float(c) for c in cur.sample_cost], cost_policy=cost_pol,
            policy_final_distance=dist, epsilon=float(epsilon),
            step_mult=float(self.step_mult), kl=kls, eta=etas,
            kl_correction=[float(r) for r in correction],
            traj_opt_status=statuses, predicted_improvement=predicted,
            actual_improvement=actual, policy_rmse=float(fit["rmse"]),
            dynamics_rmse=dyn_rmse, timings={k: round(v, 6) for k, v in timings.items()},
            discarded_samples=int(discarded), discard_reasons=list(reasons)[:10],
            warnings=warnings)
        self.history.append(rec)
        return rec

    def run(self, iterations: int, callback: Callable[[IterationRecord], None] | None = None
            ) -> list[IterationRecord]:
        """Run ``iterations`` iterations; ``callback(record)`` after each."""
        out = []
        for _ in range(iterations):
            rec = self.iteration()
            out.append(rec)
            if callback is not None:
                callback(rec)
        return out

