"""Fingerprint of the TVLG fit and the policy linearisation on fixed seeded data.

Run `python THIS save before.npz` on the tree before a change and `python THIS cmp
before.npz` after it (bench/results/gps-followups-2026-12-07.md).
"""
import sys
import numpy as np
from mbrl_ros.core.models.tvlg import TVLGModel, TVLGSettings
from mbrl_ros.core.policies.linearization import PolicyPriorGMM, fit_policy_linearization

out = {}
rng = np.random.default_rng(123)
nx, nu, T, N = 4, 2, 15, 6
A = np.eye(nx) + 0.05 * rng.standard_normal((nx, nx))
B = 0.1 * rng.standard_normal((nx, nu))
def rollouts(n, seed):
    r = np.random.default_rng(seed)
    X = np.empty((n, T + 1, nx)); U = r.standard_normal((n, T, nu))
    X[:, 0] = 0.1 * r.standard_normal((n, nx))
    for t in range(T):
        X[:, t + 1] = X[:, t] @ A.T + U[:, t] @ B.T + 0.01 * np.tanh(X[:, t]) ** 2 + 0.01 * r.standard_normal((n, nx))
    return X, U
for strength in (1.0, 0.5):
    m = TVLGModel(TVLGSettings(max_samples=12, min_samples_per_cluster=10, max_clusters=5,
                               strength=strength, seed=3))
    for it in range(3):
        X, U = rollouts(N, 10 + it)
        m.update_prior(X, U, rng=np.random.default_rng(it))
        rep = m.fit_trajectories(X, U)
        for k in ("fx", "fu", "f0", "cov", "x0_mean", "x0_cov"):
            out[f"tvlg_s{strength}_it{it}_{k}"] = getattr(m, k).copy()
        out[f"tvlg_s{strength}_it{it}_gmm_means"] = m.prior.gmm.means.copy()
        out[f"tvlg_s{strength}_it{it}_rmse"] = np.array(rep.metrics["train_rmse"])
    mu0, phi, mm, n0 = m.prior.eval(nx, nu, np.concatenate([X[:, 3], U[:, 3], X[:, 4]], axis=1))
    out[f"tvlg_s{strength}_eval"] = np.r_[mu0, phi.ravel(), mm, n0]
# policy linearisation, with and without context, with and without prior
W = 0.3 * rng.standard_normal((nu, nx + 2))
pm = lambda Z: np.tanh(Z @ W[:, :Z.shape[1]].T)
for ctx in (False, True):
    prior = PolicyPriorGMM(max_samples=12, min_samples_per_cluster=10, max_clusters=4)
    for it in range(3):
        X, U = rollouts(N, 40 + it)
        Xs = X[:, :T]
        C = rng.standard_normal((N, 2)) if ctx else None
        prior.update(Xs, pm, rng=np.random.default_rng(7 + it), context=C)
        inp = Xs if C is None else np.concatenate([Xs, np.broadcast_to(C[:, None], (N, T, 2))], axis=2)
        mu = pm(inp.reshape(N * T, -1)).reshape(N, T, nu)
        K, k, S = fit_policy_linearization(Xs, mu, np.array([0.1, 0.2]), prior)
        out[f"pol_c{ctx}_it{it}"] = np.concatenate([K.ravel(), k.ravel(), S.ravel()])
    K, k, S = fit_policy_linearization(Xs, mu, np.array([0.1, 0.2]), None)
    out[f"pol_c{ctx}_noprior"] = np.concatenate([K.ravel(), k.ravel(), S.ravel()])
if sys.argv[1] == "save":
    np.savez(sys.argv[2], **out)
else:
    ref = np.load(sys.argv[2])
    worst = 0.0
    for k in ref.files:
        d = float(np.max(np.abs(ref[k] - out[k]))) if ref[k].size else 0.0
        rel = d / max(float(np.max(np.abs(ref[k]))), 1e-300)
        worst = max(worst, d)
        print(f"{k:32s} max|diff| {d:.3e}  rel {rel:.3e}")
    print(f"{len(ref.files)} arrays, worst max|diff| {worst:.3e}")
