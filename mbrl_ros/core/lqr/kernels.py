"""Compiled (numba) kernels of the control-limited DDP backward pass: the Riccati sweep
(:mod:`.backward_pass` documents the algebra), the projected-Newton box QP (:mod:`.boxqp`
documents the method) and the batched SPD inverse. The Python modules keep the interfaces;
this one holds the only implementation of the arithmetic. How they are compiled and loaded
ahead of control time: :mod:`.jit`, :mod:`.warmup`.

Why compiled: at the sizes of MPC on an arm (nx = 14, nu = 7, T = 50) a NumPy/LAPACK sweep
spends most of its time in per-call overhead of ~10 small calls per step, not arithmetic.
"""
from __future__ import annotations

import math

import numpy as np

from mbrl_ros.core.lqr.jit import jit

__all__ = ["boxqp_kernel", "prepare_kernel", "riccati_kernel", "spd_inverse_kernel"]


# ------------------------------------------------------------------------------ Cholesky
@jit
def _chol_sub(H, idx, nf, R):
    """Upper Cholesky factor R (R'R = H[idx][:, idx], first nf indices of idx) into
    R[:nf, :nf] (strict lower part zeroed). Returns False if the block is not positive
    definite (or not finite), as LAPACK's dpotrf."""
    for j in range(nf):
        s = H[idx[j], idx[j]]
        for k in range(j):
            s -= R[k, j] * R[k, j]
        if not s > 0.0:
            return False
        d = math.sqrt(s)
        R[j, j] = d
        for i in range(j + 1, nf):
            v = H[idx[j], idx[i]]
            for k in range(j):
                v -= R[k, j] * R[k, i]
            R[j, i] = v / d
            R[i, j] = 0.0
    return True


@jit
def _chol_solve(R, nf, b):
    """b <- (R'R)^{-1} b in place (b: (nf,) vector)."""
    for i in range(nf):
        v = b[i]
        for k in range(i):
            v -= R[k, i] * b[k]
        b[i] = v / R[i, i]
    for i in range(nf - 1, -1, -1):
        v = b[i]
        for k in range(i + 1, nf):
            v -= R[i, k] * b[k]
        b[i] = v / R[i, i]


@jit
def _chol_solve_rows(R, nf, B):
    """B <- (R'R)^{-1} B in place (B: (nf, m), m right-hand sides as columns)."""
    m = B.shape[1]
    for i in range(nf):
        d = R[i, i]
        for k in range(i):
            r = R[k, i]
            for c in range(m):
                B[i, c] -= r * B[k, c]
        for c in range(m):
            B[i, c] /= d
    for i in range(nf - 1, -1, -1):
        d = R[i, i]
        for k in range(i + 1, nf):
            r = R[i, k]
            for c in range(m):
                B[i, c] -= r * B[k, c]
        for c in range(m):
            B[i, c] /= d


@jit
def _quad_value(H, g, x):
    """0.5 x'Hx + g'x."""
    n = x.shape[0]
    v = 0.0
    for i in range(n):
        hx = 0.0
        for j in range(n):
            hx += H[i, j] * x[j]
        v += x[i] * (g[i] + 0.5 * hx)
    return v


@jit
def _gradient(H, g, x, out):
    """out = g + H x."""
    n = x.shape[0]
    for i in range(n):
        s = g[i]
        for j in range(n):
            s += H[i, j] * x[j]
        out[i] = s


# ------------------------------------------------------------------------------ box QP
@jit
def boxqp_kernel(H, g, lower, upper, x0, use_x0, max_iterations, min_grad, min_rel_improve,
                 step_dec, min_step, armijo, x, free, R):
    """Box QP min 0.5 x'Hx + g'x s.t. lower <= x <= upper (see :func:`.boxqp.solve_boxqp`).

    Outputs in place: x (n,) solution, free (n,) bool, R (n, n) whose leading (nf, nf)
    block is the upper Cholesky factor of H restricted to the free set (in index order).

    Returns:
        (status, nf, iterations, factorizations).
    """
    n = g.shape[0]
    # Start: the warm start clamped into the box, else the box midpoint (0 where a bound
    # is infinite); non-finite entries become 0.
    for i in range(n):
        if use_x0:
            v = x0[i]
        elif math.isfinite(lower[i]) and math.isfinite(upper[i]):
            v = 0.5 * (lower[i] + upper[i])
        else:
            v = 0.0
        if v < lower[i]:
            v = lower[i]
        if v > upper[i]:
            v = upper[i]
        x[i] = v if math.isfinite(v) else 0.0

    idx = np.empty(n, np.int64)
    bounded = False
    for i in range(n):
        if math.isfinite(lower[i]) or math.isfinite(upper[i]):
            bounded = True
    if not bounded:
        for i in range(n):
            free[i] = True
            idx[i] = i
        if not _chol_sub(H, idx, n, R):
            return -1, 0, 0, 1
        for i in range(n):
            x[i] = -g[i]
        _chol_solve(R, n, x)
        return 3, n, 1, 1

    grad = np.empty(n)
    rhs = np.empty(n)
    if use_x0:
        # Primal-dual active-set iterations from the bounds the warm start touches
        # (Hintermueller, Ito & Kunisch 2002); projected Newton takes over if they fail.
        at_lo = np.empty(n, np.bool_)
        at_hi = np.empty(n, np.bool_)
        xn = np.empty(n)
        for i in range(n):
            at_lo[i] = x[i] <= lower[i]
            at_hi[i] = x[i] >= upper[i] and not at_lo[i]
        n_fact = 0
        for update in range(1, 5):
            nf = 0
            for i in range(n):
                if at_lo[i]:
                    xn[i] = lower[i]
                elif at_hi[i]:
                    xn[i] = upper[i]
                else:
                    xn[i] = 0.0
                    idx[nf] = i
                    nf += 1
            if nf > 0:
                n_fact += 1
                if not _chol_sub(H, idx, nf, R):
                    break
                for a in range(nf):
                    s = g[idx[a]]
                    for j in range(n):
                        s += H[idx[a], j] * xn[j]
                    rhs[a] = s
                _chol_solve(R, nf, rhs)
                for a in range(nf):
                    xn[idx[a]] = -rhs[a]
            _gradient(H, g, xn, grad)
            changed = False
            for i in range(n):
                lo_new = (xn[i] < lower[i]) or (at_lo[i] and grad[i] >= 0.0)
                hi_new = ((xn[i] > upper[i]) or (at_hi[i] and grad[i] <= 0.0)) and not lo_new
                if lo_new != at_lo[i] or hi_new != at_hi[i]:
                    changed = True
                at_lo[i] = lo_new
                at_hi[i] = hi_new
            if not changed:
                for i in range(n):
                    x[i] = xn[i]
                    free[i] = False
                for a in range(nf):
                    free[idx[a]] = True
                return (5 if nf > 0 else 6), nf, update, n_fact

    # Projected Newton (Bertsekas 1982; Tassa et al. 2014, boxQP.m).
    clamped = np.zeros(n, np.bool_)
    old_clamped = np.zeros(n, np.bool_)
    search = np.empty(n)
    xc = np.empty(n)
    value = _quad_value(H, g, x)
    old_value = 0.0
    for i in range(n):
        free[i] = True
    nf = 0
    status = 0
    n_fact = 0
    it = 0
    finished = False
    while it < max_iterations:
        it += 1
        if it > 1 and (old_value - value) < min_rel_improve * abs(old_value):
            status = 4
            finished = True
            break
        old_value = value
        _gradient(H, g, x, grad)
        changed = False
        n_clamped = 0
        for i in range(n):
            old_clamped[i] = clamped[i]
            c = (x[i] == lower[i] and grad[i] > 0.0) or (x[i] == upper[i] and grad[i] < 0.0)
            clamped[i] = c
            free[i] = not c
            if c != old_clamped[i]:
                changed = True
            if c:
                n_clamped += 1
        if n_clamped == n:
            status = 6
            nf = 0
            finished = True
            break
        if it == 1 or changed:
            nf = 0
            for i in range(n):
                if free[i]:
                    idx[nf] = i
                    nf += 1
            n_fact += 1
            if not _chol_sub(H, idx, nf, R):
                status = -1
                nf = 0
                finished = True
                break
        gg = 0.0
        for i in range(n):
            if free[i]:
                gg += grad[i] * grad[i]
        if gg < min_grad * min_grad:
            status = 5
            finished = True
            break
        # Newton step on the free variables with the clamped ones held at their bounds.
        for a in range(nf):
            s = g[idx[a]]
            for j in range(n):
                if clamped[j]:
                    s += H[idx[a], j] * x[j]
            rhs[a] = s
        _chol_solve(R, nf, rhs)
        for i in range(n):
            search[i] = 0.0
        for a in range(nf):
            search[idx[a]] = -rhs[a] - x[idx[a]]
        sdotg = 0.0
        for i in range(n):
            sdotg += search[i] * grad[i]
        if sdotg >= 0.0:
            status = 0
            finished = True
            break
        step = 1.0
        failed = False
        vc = 0.0
        while True:
            for i in range(n):
                v = x[i] + step * search[i]
                if v < lower[i]:
                    v = lower[i]
                if v > upper[i]:
                    v = upper[i]
                xc[i] = v
            vc = _quad_value(H, g, xc)
            if (vc - old_value) / (step * sdotg) >= armijo:
                break
            step *= step_dec
            if step < min_step:
                failed = True
                break
        for i in range(n):
            x[i] = xc[i]
        value = vc
        if failed:
            status = 2
            finished = True
            break
    if not finished:
        status = 1

    if status >= 1:
        # The factor must describe the free set at the returned x (the last step may have
        # hit a new bound), since the caller's feedback gains are built from it.
        _gradient(H, g, x, grad)
        changed = False
        n_clamped = 0
        for i in range(n):
            c = (x[i] == lower[i] and grad[i] > 0.0) or (x[i] == upper[i] and grad[i] < 0.0)
            if c != clamped[i]:
                changed = True
            clamped[i] = c
            if c:
                n_clamped += 1
        if changed:
            nf = 0
            for i in range(n):
                free[i] = not clamped[i]
                if free[i]:
                    idx[nf] = i
                    nf += 1
            if nf > 0:
                n_fact += 1
                if not _chol_sub(H, idx, nf, R):
                    return -1, 0, it, n_fact
        if n_clamped == n:
            nf = 0
    return status, nf, it, n_fact


# ------------------------------------------------------------------------------ Riccati
@jit
def prepare_kernel(fx, fu, lx, lu, lxx, luu, lux, lfx, lfxx, F, L, Vf):
    """Fill the homogeneous blocks (see :mod:`.backward_pass`): F[t] = [[1, 0, 0],
    [0, fx, fu]], L[t] = [[0, lx', lu'], [lx, lxx, lux'], [lu, lux, luu]], Vf = [[0, lfx'],
    [lfx, lfxx]] (F[:, 0, 0] = 1 and the zero blocks are set once at allocation).
    fx, fu, lxx, luu, lux have T rows or one (the same matrix at every step)."""
    T = F.shape[0]
    nx, nu = fu.shape[1], fu.shape[2]
    M = 1 + nx
    for t in range(T):
        tA = t if fx.shape[0] > 1 else 0
        tB = t if fu.shape[0] > 1 else 0
        tQ = t if lxx.shape[0] > 1 else 0
        tR = t if luu.shape[0] > 1 else 0
        tS = t if lux.shape[0] > 1 else 0
        for i in range(nx):
            for j in range(nx):
                F[t, 1 + i, 1 + j] = fx[tA, i, j]
            for j in range(nu):
                F[t, 1 + i, M + j] = fu[tB, i, j]
        for i in range(nx):
            L[t, 0, 1 + i] = lx[t, i]
            L[t, 1 + i, 0] = lx[t, i]
            for j in range(nx):
                L[t, 1 + i, 1 + j] = lxx[tQ, i, j]
        for a in range(nu):
            L[t, 0, M + a] = lu[t, a]
            L[t, M + a, 0] = lu[t, a]
            for j in range(nx):
                L[t, M + a, 1 + j] = lux[tS, a, j]
                L[t, 1 + j, M + a] = lux[tS, a, j]
            for b in range(nu):
                L[t, M + a, M + b] = luu[tR, a, b]
    for i in range(nx):
        Vf[0, 1 + i] = lfx[i]
        Vf[1 + i, 0] = lfx[i]
        for j in range(nx):
            Vf[1 + i, 1 + j] = lfxx[i, j]


@jit
def riccati_kernel(F, L, FtFu, Vf, mu, box, du_lower, du_upper, kK_all, Qrows, Quu_reg):
    """Riccati sweep t = T-1..0 in homogeneous coordinates (see :mod:`.backward_pass`).

    Args:
        F (T, M, N), L (T, N, N), FtFu (T, nu, N), Vf (M, M): as BackwardPass.prepare
            builds them (M = 1 + nx, N = M + nu).
        mu: regularisation; box: whether du_lower/du_upper (T, nu) apply.
        kK_all (T, nu, M), Qrows (T, nu, N), Quu_reg (T, nu, nu): outputs.

    Returns:
        (t_fail, n_box, n_clamped, dV0, dV1); t_fail = -1 on success, else the step where
        Q_uu (or its free block) is not positive definite.
    """
    T = F.shape[0]
    M = F.shape[1]
    N = F.shape[2]
    nu = N - M
    V = Vf.copy()
    W = np.empty((M, N))
    Q = np.empty((N, N))
    Rg = np.empty((nu, N))
    Huu = np.empty((nu, nu))
    Rc = np.empty((nu, nu))
    kK = np.empty((nu, M))
    G = np.zeros((N, M))
    QG = np.empty((N, M))
    Qmu = np.empty((M, nu))
    k_next = np.zeros(nu)
    iota = np.arange(nu)
    xq = np.empty(nu)
    gq = np.empty(nu)
    lo = np.empty(nu)
    hi = np.empty(nu)
    freeq = np.empty(nu, np.bool_)
    Rq = np.empty((nu, nu))
    Bf = np.empty((nu, M - 1))
    for i in range(M):
        G[i, i] = 1.0
    n_box = 0
    n_clamped = 0
    for t in range(T - 1, -1, -1):
        Ft = F[t]
        # Q = L_t + F_t' V F_t
        np.dot(V, Ft, W)
        np.dot(Ft.T, W, Q)
        Lt = L[t]
        for i in range(N):
            for j in range(N):
                Q[i, j] += Lt[i, j]
        for a in range(nu):
            for j in range(N):
                Rg[a, j] = Q[M + a, j] + mu * FtFu[t, a, j] if mu > 0.0 else Q[M + a, j]
        for a in range(nu):
            for b in range(nu):
                Huu[a, b] = Rg[a, M + b]
        ok = _chol_sub(Huu, iota, nu, Rc)
        outside = False
        if ok:
            for a in range(nu):
                for j in range(M):
                    kK[a, j] = -Rg[a, j]
            _chol_solve_rows(Rc, nu, kK)
            if box:
                for a in range(nu):
                    if kK[a, 0] < du_lower[t, a] or kK[a, 0] > du_upper[t, a]:
                        outside = True
        if not ok or outside:
            if not box:
                return t, n_box, n_clamped, 0.0, 0.0
            # Control-limited step (Tassa et al. 2014, Alg. 2), warm-started from the
            # clamped unconstrained step if Q_uu was positive definite, else (as in their
            # code) from the step of the following time index (none at the last step).
            n_box += 1
            use_x0 = True
            if outside:
                for a in range(nu):
                    xq[a] = kK[a, 0]
            else:
                use_x0 = t < T - 1
                for a in range(nu):
                    xq[a] = k_next[a]
            for a in range(nu):
                gq[a] = Rg[a, 0]
                lo[a] = du_lower[t, a]
                hi[a] = du_upper[t, a]
            status, nf, _, _ = boxqp_kernel(Huu, gq, lo, hi, xq, use_x0, 100, 1e-8, 1e-8,
                                            0.6, 1e-22, 0.1, xq, freeq, Rq)
            if status < 1:
                return t, n_box, n_clamped, 0.0, 0.0
            for a in range(nu):
                for j in range(M):
                    kK[a, j] = 0.0
                kK[a, 0] = xq[a]
            n_clamped += nu - nf
            if nf > 0:
                f = 0
                for a in range(nu):
                    if freeq[a]:
                        for j in range(M - 1):
                            Bf[f, j] = -Rg[a, 1 + j]
                        f += 1
                _chol_solve_rows(Rq, nf, Bf[:nf])
                f = 0
                for a in range(nu):
                    if freeq[a]:
                        for j in range(M - 1):
                            kK[a, 1 + j] = Bf[f, j]
                        f += 1
        # V = G' Q G with G = [[I], [k K]] = Q_mm + Q_mu kK + kK' (Q_um + Q_uu kK),
        # symmetrised (m = [1, x], kK = [k, K]). Without regularisation and limits,
        # Q_uu kK = -Q_um, so V = Q_mm + Q_mu kK (the textbook Riccati update).
        if mu == 0.0 and ok and not outside:
            for i in range(M):
                for a in range(nu):
                    Qmu[i, a] = Q[i, M + a]
            np.dot(Qmu, kK, V)
            for i in range(M):
                for j in range(M):
                    V[i, j] += Q[i, j]
        else:
            for a in range(nu):
                for j in range(M):
                    G[M + a, j] = kK[a, j]
            np.dot(Q, G, QG)
            np.dot(G.T, QG, V)
        for i in range(M):
            for j in range(i + 1, M):
                v = 0.5 * (V[i, j] + V[j, i])
                V[i, j] = v
                V[j, i] = v
        for a in range(nu):
            for j in range(M):
                kK_all[t, a, j] = kK[a, j]
            for j in range(N):
                Qrows[t, a, j] = Q[M + a, j]
            for b in range(nu):
                Quu_reg[t, a, b] = Huu[a, b]
            k_next[a] = kK[a, 0]
    dV0 = 0.0
    dV1 = 0.0
    for t in range(T):
        for a in range(nu):
            ka = kK_all[t, a, 0]
            dV0 += ka * Qrows[t, a, 0]
            s = 0.0
            for b in range(nu):
                s += Qrows[t, a, M + b] * kK_all[t, b, 0]
            dV1 += 0.5 * ka * s
    return -1, n_box, n_clamped, dV0, dV1


@jit
def spd_inverse_kernel(H, out):
    """out[t] = inv(0.5 (H[t] + H[t]')) for every t by Cholesky; returns False (out
    partly written) if some H[t] is not positive definite."""
    T, n, _ = H.shape
    S = np.empty((n, n))
    R = np.empty((n, n))
    Ri = np.empty((n, n))
    iota = np.arange(n)
    for t in range(T):
        for i in range(n):
            for j in range(n):
                S[i, j] = 0.5 * (H[t, i, j] + H[t, j, i])
        if not _chol_sub(S, iota, n, R):
            return False
        # Ri = R^{-1} (upper triangular), inv(S) = Ri Ri'.
        for j in range(n):
            for i in range(n):
                Ri[i, j] = 0.0
            Ri[j, j] = 1.0 / R[j, j]
            for i in range(j - 1, -1, -1):
                v = 0.0
                for k in range(i + 1, j + 1):
                    v += R[i, k] * Ri[k, j]
                Ri[i, j] = -v / R[i, i]
        for i in range(n):
            for j in range(i, n):
                v = 0.0
                for k in range(j, n):
                    v += Ri[i, k] * Ri[j, k]
                out[t, i, j] = v
                out[t, j, i] = v
    return True

