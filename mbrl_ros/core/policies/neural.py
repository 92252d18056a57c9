"""The global policy of guided policy search: a small neural-network Gaussian policy

    pi(u | x) = N(mu_theta(x), diag(std^2)),   mu_theta = MLP on standardised x,

* evaluated by :class:`NeuralPolicy` in plain numpy (immutable, ``action(x, t)`` in a few
  microseconds, the same Policy protocol the planners' results follow, so a control loop
  can run it like any plan);
* trained by :class:`PolicyTrainer` (torch, imported only there) in the S-step of MDGPS:
  supervised regression on the linear-Gaussian controllers' mean actions at the sampled
  states, each weighted by the controller's precision, i.e. minimising
  sum_i E[KL(pi(.|x_i) || p_i(.|x_i))] (Montgomery & Levine 2016, Sec. 4; cbfinn/gps
  ``PolicyOptTf.update``). The objective separates into the precision-weighted squared
  error of the mean (minimised by Adam) and 0.5 tr(P_i Sigma) - 0.5 log|Sigma| for the
  covariance, whose exact minimiser over diagonal Sigma, Sigma_jj = 1 / mean_i (P_i)_jj, is
  set in closed form;
* stored through :mod:`mbrl_ros.core.store` as a versioned artifact (``model.json`` +
  ``weights.npz``, no pickles) of kind ``gps_policy`` and loaded back, checksum and joint
  names verified, by :func:`load_policy`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbrl_ros.core import store
from mbrl_ros.core.models.base import FitReport, ModelError, ModelSpec
from mbrl_ros.core.settings import from_mapping, setting

__all__ = ["PolicySettings", "NeuralPolicy", "PolicyTrainer", "POLICY_KIND", "publish_policy",
           "load_policy"]

POLICY_KIND = "gps_policy"


@dataclass(frozen=True)
class PolicySettings:
    """Network and training of the global policy (S-step)."""
    hidden: tuple[int, ...] = setting((64, 64), "hidden layer widths", low=1, high=4096)
    activation: str = setting("tanh", "hidden activation", choices=("tanh", "relu"))
    iterations: int = setting(600, "Adam steps per S-step (the network is warm-started)",
                              low=1, high=1000000)
    batch_size: int = setting(256, "points per Adam step", low=1, high=1000000)
    learning_rate: float = setting(2e-3, "Adam step size", low=1e-7, high=1.0)
    weight_decay: float = setting(1e-5, "L2 penalty on the weights", low=0.0, high=1.0)
    seed: int = setting(0, "seed of the initial weights and the minibatches", low=0)
    threads: int = setting(1, "torch threads while training", low=1, high=64)


_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda a: np.maximum(a, 0.0)}


def _ro(a) -> np.ndarray:
    out = np.array(a, dtype=np.float64, order="C")
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class NeuralPolicy:
    """Immutable numpy evaluation of the global policy.

    u = clip(u_mean + u_scale * MLP((x - x_mean) / x_std), u_min, u_max).

    A *target-conditioned* policy (``n_task`` > 0) takes the task -- the target joint
    positions -- as ``n_task`` more inputs after the state: the network's input is
    [x, task], so one network serves many targets. :meth:`with_task` binds a task, after
    which ``action(x, t)`` / ``mean(X)`` take states only (the Policy protocol a control
    loop uses); ``mean`` also accepts [x, task] rows directly.

    Attributes:
        weights: per layer (out, in) matrices; biases: per layer (out,) vectors.
        x_mean, x_std: (nx + n_task,) input standardisation; u_mean, u_scale: (nu,) output scaling.
        std: (nu,) standard deviation of the Gaussian policy [action units].
        u_min, u_max: (nu,) action limits (may be +-inf).
        activation: 'tanh' or 'relu' (hidden layers; the output layer is linear).
        t0: time [s] the policy was handed out at; duration: how long it stays valid [s]
            (``t_end`` = t0 + duration, what a control loop checks for a stale plan; the
            policy itself does not depend on time).
    """
    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    x_mean: np.ndarray
    x_std: np.ndarray
    u_mean: np.ndarray
    u_scale: np.ndarray
    std: np.ndarray
    u_min: np.ndarray
    u_max: np.ndarray
    activation: str = "tanh"
    t0: float = 0.0
    duration: float = math.inf
    n_task: int = 0
    task: np.ndarray | None = None
    _act: Any = field(init=False, repr=False)
    _x_scale: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        s = object.__setattr__
        if len(self.weights) != len(self.biases) or not self.weights:
            raise ValueError("need one bias per weight matrix and at least one layer")
        W = tuple(_ro(w) for w in self.weights)
        b = tuple(_ro(v) for v in self.biases)
        for i, (w, v) in enumerate(zip(W, b)):
            if w.ndim != 2 or v.shape != (w.shape[0],):
                raise ValueError(f"layer {i}: weight {w.shape} and bias {v.shape} disagree")
            if i and w.shape[1] != W[i - 1].shape[0]:
                raise ValueError(f"layer {i} takes {w.shape[1]} inputs, layer {i - 1} gives "
                                 f"{W[i - 1].shape[0]}")
        nx, nu = W[0].shape[1], W[-1].shape[0]
        n_task = int(self.n_task)
        if not 0 <= n_task < nx:
            raise ValueError(f"n_task must be in [0, {nx}), got {n_task}")
        s(self, "n_task", n_task)
        if self.task is not None:
            task = _ro(np.asarray(self.task, dtype=np.float64).reshape(-1))
            if task.shape != (n_task,) or not np.all(np.isfinite(task)):
                raise ValueError(f"task must be {n_task} finite numbers, got "
                                 f"{np.asarray(self.task).tolist()}")
            s(self, "task", task)
        s(self, "weights", W)
        s(self, "biases", b)
        for name, n in (("x_mean", nx), ("x_std", nx), ("u_mean", nu), ("u_scale", nu),
                        ("std", nu), ("u_min", nu), ("u_max", nu)):
            a = _ro(np.broadcast_to(np.asarray(getattr(self, name), dtype=np.float64), (n,)))
            s(self, name, a)
        if np.any(self.x_std <= 0) or np.any(self.std < 0) or np.any(self.u_min > self.u_max):
            raise ValueError("x_std must be > 0, std >= 0 and u_min <= u_max")
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; valid: "
                             f"{', '.join(_ACTIVATIONS)}")
        s(self, "_act", _ACTIVATIONS[self.activation])
        s(self, "_x_scale", _ro(1.0 / self.x_std))
        s(self, "t0", float(self.t0))
        s(self, "duration", float(self.duration))

    @property
    def nx(self) -> int:
        """State dimension (network inputs minus the task inputs)."""
        return int(self.weights[0].shape[1]) - self.n_task

    def with_task(self, task) -> "NeuralPolicy":
        """The same network with ``task`` (n_task,) bound (e.g. the target joint positions
        [rad|m]); a policy without task inputs is returned unchanged.

        Raises:
            ValueError: wrong size or non-finite task.
        """
        if self.n_task == 0:
            return self
        return dataclasses.replace(self, task=task)

    def _inputs(self, X: np.ndarray) -> np.ndarray:
        if self.n_task == 0 or X.shape[-1] == self.nx + self.n_task:
            return X
        if self.task is None:
            raise ValueError("target-conditioned policy without a task: bind one with "
                             "with_task(target)")
        return np.concatenate([X, np.broadcast_to(self.task, X.shape[:-1] + (self.n_task,))],
                              axis=-1)

    @property
    def nu(self) -> int:
        return int(self.weights[-1].shape[0])

    @property
    def t_end(self) -> float:
        """Time [s] after which a control loop should treat this policy as stale."""
        return self.t0 + self.duration

    def at(self, t0: float, duration: float = math.inf) -> "NeuralPolicy":
        """The same policy, handed out at time t0 [s] and valid for ``duration`` [s]."""
        return dataclasses.replace(self, t0=t0, duration=duration)

    def mean(self, X: np.ndarray) -> np.ndarray:
        """Unclipped mean actions (B, nu) for states X (B, nx) (or (nu,) for (nx,)); rows
        may also be [x, task] (B, nx + n_task)."""
        h = (self._inputs(np.asarray(X, dtype=np.float64)) - self.x_mean) * self._x_scale
        last = len(self.weights) - 1
        for i, (W, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ W.T + b
            if i < last:
                h = self._act(h)
        return self.u_mean + self.u_scale * h

    def action(self, x: np.ndarray, t: float = 0.0) -> np.ndarray:
        """Deterministic action (nu,) for state x (nx,), clipped to the limits; t unused."""
        if self.n_task:
            x = self._inputs(np.asarray(x, dtype=np.float64))
        h = (x - self.x_mean) * self._x_scale
        act = self._act
        W, b = self.weights, self.biases
        last = len(W) - 1
        for i in range(last):
            h = act(np.dot(W[i], h) + b[i])
        u = np.dot(W[last], h)
        u += b[last]
        u *= self.u_scale
        u += self.u_mean
        np.maximum(u, self.u_min, out=u)
        return np.minimum(u, self.u_max, out=u)

    def sample(self, x: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        """Action with Gaussian noise N(0, diag(std^2)) added before clipping (nu,)."""
        u = self.mean(x) + self.std * rng.standard_normal(self.nu)
        return np.clip(u, self.u_min, self.u_max)

    # ------------------------------------------------------------------ arrays
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Every number of the policy as named arrays (for ``weights.npz``)."""
        out = {f"layer{i}_weight": w for i, w in enumerate(self.weights)}
        out.update({f"layer{i}_bias": b for i, b in enumerate(self.biases)})
        out.update(x_mean=self.x_mean, x_std=self.x_std, u_mean=self.u_mean,
                   u_scale=self.u_scale, std=self.std, u_min=self.u_min, u_max=self.u_max)
        if self.n_task:
            out["n_task"] = np.array(self.n_task)
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], activation: str = "tanh"
                    ) -> "NeuralPolicy":
        """Inverse of :meth:`to_arrays`."""
        n = 0
        while f"layer{n}_weight" in arrays:
            n += 1
        try:
            return cls(tuple(arrays[f"layer{i}_weight"] for i in range(n)),
                       tuple(arrays[f"layer{i}_bias"] for i in range(n)),
                       arrays["x_mean"], arrays["x_std"], arrays["u_mean"], arrays["u_scale"],
                       arrays["std"], arrays["u_min"], arrays["u_max"], activation,
                       n_task=int(arrays["n_task"]) if "n_task" in arrays else 0)
        except KeyError as e:
            raise ModelError(f"policy arrays lack {e.args[0]!r}") from e


class PolicyTrainer:
    """Trains the global policy (torch), warm-started across S-steps.

    The input standardisation is computed from the first training set and then kept (as
    cbfinn/gps does), so later data does not move the network's inputs under it; the
    output is scaled to the action limits (or to the first targets' spread when the limits
    are infinite).

    Args:
        nx, nu: state and action dimensions.
        u_min, u_max: (nu,) action limits.
        settings: :class:`PolicySettings`.
        n_task: task inputs (target joint positions) after the state; ``train`` then takes
            X as [x, task] rows (P, nx + n_task). Their standardisation keeps a floor of
            ``task_std_floor`` so a task seen only once is not scaled up a thousandfold.
    """

    def __init__(self, nx: int, nu: int, u_min: np.ndarray, u_max: np.ndarray,
                 settings: PolicySettings | None = None, n_task: int = 0,
                 task_std_floor: float = 0.1):
        self.settings = settings or PolicySettings()
        self.nx, self.nu = int(nx), int(nu)
        self.n_task = int(n_task)
        self.task_std_floor = float(task_std_floor)
        self.u_min = np.broadcast_to(np.asarray(u_min, dtype=np.float64), (self.nu,)).copy()
        self.u_max = np.broadcast_to(np.asarray(u_max, dtype=np.float64), (self.nu,)).copy()
        self.x_mean: np.ndarray | None = None
        self.x_std: np.ndarray | None = None
        self.u_mean: np.ndarray | None = None
        self.u_scale: np.ndarray | None = None
        self.std = np.ones(self.nu)
        self.net = None
        self._opt = None
        self._gen = None
        self.steps = 0

    def _build(self, X: np.ndarray, U: np.ndarray) -> None:
        import torch

        s = self.settings
        self.x_mean = X.mean(axis=0)
        floor = np.r_[np.full(self.nx, 1e-3), np.full(self.n_task, self.task_std_floor)]
        self.x_std = np.maximum(X.std(axis=0), floor)
        finite = np.isfinite(self.u_min) & np.isfinite(self.u_max)
        lo, hi = np.where(finite, self.u_min, 0.0), np.where(finite, self.u_max, 0.0)
        self.u_mean = np.where(finite, 0.5 * (lo + hi), U.mean(axis=0))
        self.u_scale = np.where(finite, np.maximum(0.5 * (hi - lo), 1e-6),
                                np.maximum(U.std(axis=0), 1e-3))
        torch.manual_seed(s.seed)
        layers: list = []
        width = self.nx + self.n_task
        act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[s.activation]
        for h in s.hidden:
            layers += [torch.nn.Linear(width, h), act()]
            width = h
        out = torch.nn.Linear(width, self.nu)
        with torch.no_grad():              # start near zero action: u_mean
            out.weight.mul_(0.1)
            out.bias.zero_()
        layers.append(out)
        self.net = torch.nn.Sequential(*layers).double()
        self._opt = torch.optim.Adam(self.net.parameters(), lr=s.learning_rate,
                                     weight_decay=s.weight_decay)
        self._gen = torch.Generator().manual_seed(s.seed)

    def train(self, X: np.ndarray, U: np.ndarray, prec: np.ndarray,
              weights: np.ndarray | None = None) -> dict[str, float]:
        """One S-step: fit mu_theta(X) to U weighted by the precisions.

        Args:
            X: (P, nx + n_task) states (and tasks); U: (P, nu) target mean actions;
            prec: (P, nu, nu) target precisions (inverse controller covariances);
            weights: (P,) non-negative point weights (default 1).

        Returns:
            loss (precision-weighted squared error per point, before/after), rmse (of the
            mean actions, action units), std (mean policy std), seconds.
        """
        import torch

        t_start = time.perf_counter()
        X = np.asarray(X, dtype=np.float64)
        U = np.asarray(U, dtype=np.float64)
        prec = np.asarray(prec, dtype=np.float64)
        P = X.shape[0]
        w = np.ones(P) if weights is None else np.asarray(weights, dtype=np.float64)
        nin = self.nx + self.n_task
        if X.shape != (P, nin) or U.shape != (P, self.nu) or \
                prec.shape != (P, self.nu, self.nu) or w.shape != (P,):
            raise ValueError(f"expected X (P, {nin}), U (P, {self.nu}), prec (P, {self.nu}, "
                             f"{self.nu}), weights (P,); got {X.shape}, {U.shape}, "
                             f"{prec.shape}, {w.shape}")
        if self.net is None:
            self._build(X, U)
        s = self.settings
        # The loss scale does not change the minimiser; normalising it keeps Adam's
        # effective step the same whatever the controllers' eta (precision scale).
        scale = float(np.mean(np.trace(prec, axis1=1, axis2=2))) / self.nu
        wn = w / max(w.mean(), 1e-300)
        prev = torch.get_num_threads()
        torch.set_num_threads(s.threads)
        try:
            xt = torch.as_tensor((X - self.x_mean) / self.x_std)
            ut = torch.as_tensor(U)
            pt = torch.as_tensor(prec / scale)
            wt = torch.as_tensor(wn)
            um = torch.as_tensor(self.u_mean)
            us = torch.as_tensor(self.u_scale)

            def loss_on(idx=None):
                xb, ub, pb, wb = (xt, ut, pt, wt) if idx is None else \
                    (xt[idx], ut[idx], pt[idx], wt[idx])
                d = um + us * self.net(xb) - ub
                return 0.5 * (wb * torch.einsum("bi,bij,bj->b", d, pb, d)).mean()

            with torch.no_grad():
                loss0 = float(loss_on()) * scale
            bs = min(s.batch_size, P)
            for _ in range(s.iterations):
                idx = torch.randint(0, P, (bs,), generator=self._gen)
                self._opt.zero_grad()
                loss = loss_on(idx)
                loss.backward()
                self._opt.step()
            self.steps += s.iterations
            with torch.no_grad():
                loss1 = float(loss_on()) * scale
                pred = (um + us * self.net(xt)).numpy()
        finally:
            torch.set_num_threads(prev)
        # exact minimiser of mean_i w_i [0.5 tr(P_i Sigma) - 0.5 log|Sigma|], Sigma diagonal
        diag = np.einsum("pii->pi", prec)
        self.std = np.sqrt(1.0 / np.maximum(np.average(diag, axis=0, weights=w), 1e-300))
        err = pred - U
        return {"loss_before": loss0, "loss_after": loss1,
                "rmse": float(np.sqrt(np.average(np.sum(err ** 2, axis=1), weights=w)
                                      / self.nu)),
                "std": float(np.mean(self.std)), "seconds": time.perf_counter() - t_start}

    def policy(self) -> NeuralPolicy:
        """Snapshot of the current network as an immutable numpy policy.

        Raises:
            RuntimeError: before the first :meth:`train`.
        """
        if self.net is None:
            raise RuntimeError("the global policy has not been trained yet")
        lin = [m for m in self.net if hasattr(m, "weight")]
        return NeuralPolicy(tuple(m.weight.detach().numpy().copy() for m in lin),
                            tuple(m.bias.detach().numpy().copy() for m in lin),
                            self.x_mean, self.x_std, self.u_mean, self.u_scale, self.std,
                            self.u_min, self.u_max, self.settings.activation,
                            n_task=self.n_task)

    # A checkpoint (pickle) of the trainer: torch's Generator does not pickle, its state does.
    def __getstate__(self):
        d = dict(self.__dict__)
        gen = d.pop("_gen")
        d["_gen_state"] = None if gen is None else gen.get_state()
        return d

    def __setstate__(self, d):
        state = d.pop("_gen_state", None)
        self.__dict__.update(d)
        self._gen = None
        if state is not None:
            import torch
            self._gen = torch.Generator()
            self._gen.set_state(state)


# ---------------------------------------------------------------------- artifacts
@dataclass
class _PolicyArtifact:
    """What :func:`mbrl_ros.core.store.publish` needs of an artifact."""
    spec: ModelSpec
    settings: PolicySettings
    arrays: dict[str, np.ndarray]
    kind: str = POLICY_KIND

    def state_arrays(self) -> dict[str, np.ndarray]:
        return self.arrays


def publish_policy(policy: NeuralPolicy, root: str | Path, name: str, spec: ModelSpec,
                   settings: PolicySettings | None = None, report: FitReport | None = None,
                   extra_arrays: dict[str, np.ndarray] | None = None) -> store.ArtifactInfo:
    """Write ``policy`` as the next version of ``<root>/<name>`` (atomic, ``latest``
    repointed), through the same store as the dynamics models.

    Args:
        spec: state/action names (joint names), dims, control period and robot.
        settings: the network settings (recorded in model.json; activation is read back).
        report: metrics and notes for model.json.
        extra_arrays: more arrays to keep (prefix ``task_``, e.g. the target state).

    Raises:
        ValueError: spec dimensions differ from the policy's.
    """
    if (spec.nx, spec.nu) != (policy.nx, policy.nu):
        raise ValueError(f"spec is for nx={spec.nx}, nu={spec.nu}; the policy has "
                         f"nx={policy.nx}, nu={policy.nu}")
    settings = settings or PolicySettings()
    if settings.activation != policy.activation:
        settings = dataclasses.replace(settings, activation=policy.activation)
    arrays = policy.to_arrays()
    for k, v in (extra_arrays or {}).items():
        arrays[f"task_{k}"] = np.asarray(v)
    return store.publish(_PolicyArtifact(spec, settings, arrays), root, name, report)


def load_policy(uri: str | Path, expect: ModelSpec | None = None,
                checksum: str | None = None) -> tuple[NeuralPolicy, dict[str, Any]]:
    """Load and verify a ``gps_policy`` artifact (a version directory or
    ``<root>/<name>/latest``).

    Returns:
        The policy and the artifact's metadata (model.json, plus ``spec`` as a ModelSpec,
        ``task`` with the ``task_*`` arrays and ``path``, the resolved version directory).

    Raises:
        ModelError: not a policy artifact, missing/corrupt/modified weights, checksum
            mismatch, or (with ``expect``) other state/action names.
    """
    meta = store.read_meta(Path(str(uri).removeprefix("file://")).resolve())
    if meta.get("kind") != POLICY_KIND:
        raise ModelError(f"{uri}: artifact kind {meta.get('kind')!r} is not a "
                         f"{POLICY_KIND!r} (a dynamics model? load it with store.load)")
    path, meta, spec, arrays = store.read_verified(uri, expect, checksum)
    settings = from_mapping(PolicySettings, meta.get("settings") or {})
    try:
        policy = NeuralPolicy.from_arrays(arrays, settings.activation)
    except ValueError as e:
        raise ModelError(f"{path}: inconsistent policy arrays: {e}") from e
    if (policy.nx, policy.nu) != (spec.nx, spec.nu):
        raise ModelError(f"{path}: weights are for nx={policy.nx}, nu={policy.nu} but "
                         f"model.json says nx={spec.nx}, nu={spec.nu}")
    meta = dict(meta, spec=spec, path=str(path),
                task={k[5:]: v for k, v in arrays.items() if k.startswith("task_")})
    return policy, meta
