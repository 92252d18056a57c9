"""Cost terms: analytic derivatives vs finite differences; numpy and torch batches agree."""
import numpy as np
import pytest
import torch

from mbrl_ros.core.costs import Cost, JointLimitBarrier, QuadraticCost, SumCost

torch.set_num_threads(1)
NX, NU, T = 6, 3, 7


def _quadratic(rng):
    A = rng.standard_normal((NX, NX))
    Bm = rng.standard_normal((NU, NU))
    return QuadraticCost(A @ A.T, Bm @ Bm.T + np.eye(NU), 2.0 * np.eye(NX),
                         x_target=rng.standard_normal(NX), u_ref=rng.standard_normal(NU))


def _barrier():
    return JointLimitBarrier(lo=[-1.0, -0.5, -2.0], hi=[1.0, 0.5, 2.0], nx=NX, nu=NU,
                             margin=0.1, weight=50.0, terminal_weight=80.0)


def _periodic(rng):
    A = rng.standard_normal((NX, NX))
    Q = A @ A.T
    for i in (1, 4):             # a periodic index is not coupled to others: smooth cost
        Q[i, :] = Q[:, i] = 0.0
        Q[i, i] = 2.0 + i
    return QuadraticCost(Q, np.eye(NU), 3.0 * np.eye(NX),
                         x_target=rng.standard_normal(NX), periodic=[1, 4])


def _costs(rng):
    q, b = _quadratic(rng), _barrier()
    return {"quadratic": q, "barrier": b, "sum": q + b, "periodic": _periodic(rng)}


def _away_from_kinks(rng, n):
    """States whose positions are not within 1e-3 of the barrier's band edges (the Hessian
    jumps there, so central differences of the gradient would straddle the jump)."""
    xs = 1.5 * rng.standard_normal((n, NX))
    edges = np.array([[-0.9, 0.9], [-0.4, 0.4], [-1.9, 1.9]])
    for j in range(3):
        for e in edges[j]:
            close = np.abs(xs[:, j] - e) < 1e-3
            xs[close, j] += 0.01
    return xs


def _fd_grad(f, z, eps=1e-6):
    g = np.zeros_like(z)
    for i in range(z.size):
        dz = np.zeros_like(z)
        dz[i] = eps
        g[i] = (f(z + dz) - f(z - dz)) / (2 * eps)
    return g


@pytest.mark.parametrize("name", ["quadratic", "barrier", "sum"])
def test_stage_derivatives_match_finite_differences(name):
    rng = np.random.default_rng(0)
    cost = _costs(rng)[name]
    xs = _away_from_kinks(rng, T)
    us = rng.standard_normal((T, NU))
    lx, lu, lxx, luu, lux = cost.stage_derivatives(xs, us)
    assert lx.shape == (T, NX) and lu.shape == (T, NU) and lxx.shape == (T, NX, NX)
    assert luu.shape == (T, NU, NU) and lux.shape == (T, NU, NX)
    for t in range(T):
        def l(z, t=t):
            return cost.stage(z[None, :NX], z[None, NX:])[0]

        def grad(z, t=t):
            d = cost.stage_derivatives(z[None, :NX], z[None, NX:])
            return np.concatenate([d[0][0], d[1][0]])

        z = np.concatenate([xs[t], us[t]])
        np.testing.assert_allclose(np.concatenate([lx[t], lu[t]]), _fd_grad(l, z),
                                   rtol=1e-6, atol=1e-6)
        H = np.stack([_fd_grad(lambda zz, i=i: grad(zz)[i], z) for i in range(NX + NU)])
        np.testing.assert_allclose(lxx[t], H[:NX, :NX], atol=1e-5)
        np.testing.assert_allclose(luu[t], H[NX:, NX:], atol=1e-5)
        np.testing.assert_allclose(lux[t], H[NX:, :NX], atol=1e-5)


@pytest.mark.parametrize("name", ["quadratic", "barrier", "sum"])
def test_terminal_derivatives_match_finite_differences(name):
    rng = np.random.default_rng(1)
    cost = _costs(rng)[name]
    x = _away_from_kinks(rng, 1)[0]
    lx, lxx = cost.terminal_derivatives(x)
    np.testing.assert_allclose(lx, _fd_grad(cost.terminal, x), rtol=1e-6, atol=1e-6)
    H = np.stack([_fd_grad(lambda z, i=i: cost.terminal_derivatives(z)[0][i], x)
                  for i in range(NX)])
    np.testing.assert_allclose(lxx, H, atol=1e-5)


def test_barrier_is_zero_inside_band_and_positive_outside():
    b = _barrier()
    inside = np.zeros((1, NX))
    assert b.stage(inside, np.zeros((1, NU)))[0] == 0.0
    out = inside.copy()
    out[0, 0] = 1.2    # 0.3 beyond hi - margin = 0.9
    assert b.stage(out, np.zeros((1, NU)))[0] == pytest.approx(0.5 * 50.0 * 0.3 ** 2)
    assert b.terminal(out[0]) == pytest.approx(0.5 * 80.0 * 0.3 ** 2)
    with pytest.raises(ValueError, match="empty band"):
        JointLimitBarrier([0.0], [0.1], nx=2, nu=1, margin=0.1)


@pytest.mark.parametrize("name", ["quadratic", "barrier", "sum", "periodic"])
def test_batch_numpy_and_torch_agree_with_stage(name):
    rng = np.random.default_rng(2)
    cost = _costs(rng)[name]
    K = 5
    xs = 1.5 * rng.standard_normal((K, T, NX))
    us = rng.standard_normal((K, T, NU))
    xf = 1.5 * rng.standard_normal((K, NX))
    ref = np.array([cost.stage(xs[k], us[k]).sum() for k in range(K)])
    ref_f = np.array([cost.terminal(xf[k]) for k in range(K)])
    np.testing.assert_allclose(cost.stage_batch(xs, us), ref, rtol=1e-12)
    np.testing.assert_allclose(cost.terminal_batch(xf), ref_f, rtol=1e-12)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        out = cost.stage_batch(torch.as_tensor(xs, dtype=dtype), torch.as_tensor(us, dtype=dtype))
        assert isinstance(out, torch.Tensor) and out.dtype == dtype and out.shape == (K,)
        np.testing.assert_allclose(out.numpy(), ref, rtol=tol, atol=tol)
        out_f = cost.terminal_batch(torch.as_tensor(xf, dtype=dtype))
        np.testing.assert_allclose(out_f.numpy(), ref_f, rtol=tol, atol=tol)


def test_total_and_immutability():
    rng = np.random.default_rng(3)
    q = _quadratic(rng)
    xs = rng.standard_normal((T + 1, NX))
    us = rng.standard_normal((T, NU))
    assert q.total(xs, us) == pytest.approx(q.stage(xs[:-1], us).sum() + q.terminal(xs[-1]))
    new_target = np.ones(NX)
    q2 = q.with_target(new_target)
    assert q2 is not q and not np.allclose(q.x_target, new_target)
    np.testing.assert_array_equal(q2.x_target, new_target)
    np.testing.assert_array_equal(q2.Q, q.Q)
    with pytest.raises(ValueError):
        q.x_target[0] = 3.0
    new_target[0] = 7.0                                # the cost holds its own copy
    assert q2.x_target[0] == 1.0
    assert q2.terminal(np.ones(NX)) == 0.0
    q3 = q.with_reference_action(np.zeros(NU))
    np.testing.assert_array_equal(q3.u_ref, np.zeros(NU))


def test_sum_flattens_and_checks_dimensions():
    rng = np.random.default_rng(4)
    q, b = _quadratic(rng), _barrier()
    s = q + b + q
    assert isinstance(s, SumCost) and len(s.terms) == 3 and isinstance(s, Cost)
    xs = rng.standard_normal((T, NX))
    us = rng.standard_normal((T, NU))
    np.testing.assert_allclose(s.stage(xs, us), 2 * q.stage(xs, us) + b.stage(xs, us))
    with pytest.raises(ValueError, match="same"):
        SumCost([q, QuadraticCost(np.eye(2), np.eye(1))])


def test_diagonal_constructor_and_shape_errors():
    q = QuadraticCost.diagonal([1.0, 2.0], [0.5], qf=[3.0, 4.0])
    np.testing.assert_array_equal(q.Qf, np.diag([3.0, 4.0]))
    with pytest.raises(ValueError, match="x_target"):
        QuadraticCost(np.eye(2), np.eye(1), x_target=np.zeros(3))


def test_periodic_error_wraps_is_smooth_and_has_exact_gradient():
    """Continuous joints: the cost is 2 pi-periodic in the angle, equals the plain quadratic
    for small errors, its gradient is exact and its Hessian is the Gauss-Newton J' Q J."""
    rng = np.random.default_rng(5)
    cost = _periodic(rng)
    plain = QuadraticCost(cost.Q, cost.R, cost.Qf, x_target=cost.x_target)
    xs = 3.0 * rng.standard_normal((T, NX))
    us = rng.standard_normal((T, NU))
    turn = np.zeros(NX)
    turn[[1, 4]] = [2 * np.pi, -4 * np.pi]
    np.testing.assert_allclose(cost.stage(xs + turn, us), cost.stage(xs, us), rtol=1e-9)
    assert cost.terminal(xs[0] + turn) == pytest.approx(cost.terminal(xs[0]), rel=1e-9)
    # not periodic on the other indices
    other = np.zeros(NX)
    other[0] = 2 * np.pi
    assert cost.terminal(xs[0] + other) != pytest.approx(cost.terminal(xs[0]), rel=1e-3)
    near = cost.x_target + 1e-4 * rng.standard_normal(NX)
    assert cost.terminal(near) == pytest.approx(plain.terminal(near), rel=1e-6)
    # pole hanging (error pi): the chord error is 2, the plain one pi
    x = cost.x_target.copy()
    x[1] += np.pi
    e = np.zeros(NX)
    e[1] = 2.0
    assert cost.terminal(x) == pytest.approx(0.5 * e @ cost.Qf @ e)
    lx, lu, lxx, _, _ = cost.stage_derivatives(xs, us)
    for t in range(T):
        z = np.concatenate([xs[t], us[t]])
        g = _fd_grad(lambda zz: cost.stage(zz[None, :NX], zz[None, NX:])[0], z)
        np.testing.assert_allclose(np.concatenate([lx[t], lu[t]]), g, rtol=1e-6, atol=1e-6)
        J = np.ones(NX)
        J[[1, 4]] = np.cos(0.5 * (xs[t, [1, 4]] - cost.x_target[[1, 4]]))
        np.testing.assert_allclose(lxx[t], J[:, None] * cost.Q * J[None, :], atol=1e-12)
        assert np.linalg.eigvalsh(lxx[t]).min() > -1e-9
    gf, Hf = cost.terminal_derivatives(xs[0])
    np.testing.assert_allclose(gf, _fd_grad(cost.terminal, xs[0]), rtol=1e-6, atol=1e-6)
    assert cost.with_target(np.zeros(NX)).periodic.tolist() == [1, 4]
    with pytest.raises(ValueError, match="out of range"):
        QuadraticCost(np.eye(2), np.eye(1), periodic=[2])
