"""Torch-side prediction for sampling planners: one step for a set of particles
(:meth:`Propagation.propagate`, PETS's expectation / TS-1 / TS-inf) and whole-horizon
rollouts of many action sequences (:meth:`Propagation.rollout`), without numpy round
trips. Shapes: particles x (P, nx), u (P, nu), state and effort units, ``torch_dtype``.
Member indices are *elite* indices (``0 <= i < n_elite``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mbrl_ros.core.models.base import ModelError, check_xu
from mbrl_ros.core.models.ensemble import network as _network

MODES = ("expectation", "ts1", "tsinf")


class Propagation:
    """Particle propagation of :class:`~mbrl_ros.core.models.ensemble.EnsembleModel`
    (a mixin)."""

    def _norm_in(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return (self.features(x, u) - self._t_in_mean) / self._t_in_std

    def _check_torch(self, x: torch.Tensor, u: torch.Tensor) -> None:
        spec = self.spec
        if x.ndim != 2 or u.ndim != 2 or x.shape[1] != spec.nx or u.shape[1] != spec.nu \
                or x.shape[0] != u.shape[0]:
            raise ModelError(f"expected x (P, {spec.nx}) and u (P, {spec.nu}) tensors, got "
                             f"{tuple(x.shape)} and {tuple(u.shape)}")

    def draw_members(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Balanced random elite assignment for ``n`` particles (for TS-inf).

        Returns:
            (n,) long tensor in [0, n_elite): each elite gets n // E or n // E + 1
            particles, in random order.
        """
        self._require_fitted()
        E = self.n_elite
        perm = torch.randperm(n, generator=generator)
        return perm % E

    @torch.no_grad()
    def member_means(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Next-state mean of every elite for every particle (for disagreement measures).

        Args:
            x: (P, nx), u: (P, nu) tensors of ``torch_dtype``, state and effort units.

        Returns:
            (E, P, nx) next-state means, state units.
        """
        self._require_fitted()
        self._check_torch(x, u)
        z = self._norm_in(x, u)
        mean, _ = self._forward_elites(z.unsqueeze(0).expand(self.n_elite, -1, -1))
        return x + self._t_out_mean + self._t_out_std * mean

    def _grouped(self, z: torch.Tensor, member: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run each row of z through its own elite, all elites in one batched pass.

        Rows are sorted by member and placed in an (E, k, in) block (k = the largest group,
        shorter groups zero-padded), mirroring mbrl-lib's reshape of P = E * k particles.
        """
        E = self.n_elite
        P = z.shape[0]
        if member.shape != (P,):
            raise ModelError(f"member_idx must have shape ({P},), got {tuple(member.shape)}")
        member = member.to(torch.long)
        if P and (int(member.min()) < 0 or int(member.max()) >= E):
            raise ModelError(f"member_idx must be in [0, {E}) (elite indices)")
        order = torch.argsort(member, stable=True)
        counts = torch.bincount(member, minlength=E)
        k = int(counts.max()) if P else 0
        if P == E * k:
            # Balanced assignment: a pure reshape, no padding.
            mean, logvar = self._forward_elites(z[order].view(E, k, z.shape[1]))
            nx = mean.shape[-1]
            mean, logvar = mean.reshape(P, nx), logvar.reshape(P, nx)
        else:
            ms = member[order]
            start = torch.cumsum(counts, 0) - counts
            rank = torch.arange(P) - start[ms]
            block = z.new_zeros((E, k, z.shape[1]))
            block[ms, rank] = z[order]
            mean, logvar = self._forward_elites(block)
            mean, logvar = mean[ms, rank], logvar[ms, rank]
        out_mean = torch.empty_like(mean)
        out_lv = torch.empty_like(logvar)
        out_mean[order] = mean
        out_lv[order] = logvar
        return out_mean, out_lv

    @torch.no_grad()
    def propagate(self, x: torch.Tensor, u: torch.Tensor, mode: str = "expectation",
                  member_idx: torch.Tensor | None = None,
                  generator: torch.Generator | None = None, sample: bool = True
                  ) -> torch.Tensor:
        """One step of particle propagation (PETS section 4).

        Args:
            x: (P, nx) states, u: (P, nu) efforts; tensors of ``torch_dtype`` on ``device``.
            mode: 'expectation' (mean of the elites' means; deterministic), 'ts1' (every
                particle uses a uniformly random elite, re-drawn at each call; balanced as
                in mbrl-lib) or 'tsinf' (particle p uses elite ``member_idx[p]``; keep the
                indices fixed over the horizon, e.g. from :meth:`draw_members`).
            member_idx: (P,) long elite indices in [0, E); required for 'tsinf'.
            generator: torch generator for the member draw and the Gaussian noise.
            sample: for the TS modes, sample the member's Gaussian (True, as in PETS) or
                return its mean.

        Returns:
            (P, nx) next states, state units.

        Raises:
            ModelError: unknown mode, missing/invalid member_idx, wrong shapes.
        """
        self._require_fitted()
        self._check_torch(x, u)
        if mode not in MODES:
            raise ModelError(f"unknown propagation mode {mode!r}; one of {', '.join(MODES)}")
        z = self._norm_in(x, u)
        if mode == "expectation":
            mean, _ = self._forward_elites(z.unsqueeze(0).expand(self.n_elite, -1, -1))
            delta = mean.mean(dim=0)
        else:
            if mode == "ts1":
                member = self.draw_members(x.shape[0], generator)
            elif member_idx is None:
                raise ModelError("propagate(mode='tsinf') needs member_idx (P,) elite indices")
            else:
                member = member_idx
            mean, logvar = self._grouped(z, member)
            delta = mean
            if sample:
                noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
                delta = mean + torch.exp(0.5 * logvar) * noise
        return x + self._t_out_mean + self._t_out_std * delta

    # ------------------------------------------------------------------ whole-horizon rollouts
    def _fold64(self) -> dict:
        """Elite parameters with the normalisers and the linear prior folded in, float64
        torch tensors (cached): the one fold behind :meth:`_fold` (torch, ``torch_dtype``)
        and :meth:`mlp_dynamics` (numpy float64, compiled rollouts and Jacobians).

        In centred coordinates ``xc = x - in_mean[:nx]``, ``uc = u - in_mean[nx:]`` the
        normalised input is ``[xc, uc] / in_std``, so the first layer is
        ``b0 + xc @ (W0x / sx) + uc @ (W0u / su)``: the division is folded into the weights
        while the centring stays a subtraction (no cancellation for columns with a tiny
        floored std). The linear prior and the output de-normalisation,
        ``out_mean + out_std (c + z A + res_std net)``, are affine too: their input terms
        become ``nx`` extra output columns of the first layer's product, the scales go
        into the last layer's mean columns and the constants into one per-member bias.
        """
        if self._folded64 is not None:
            return self._folded64
        f64 = torch.float64
        Ws, bs, max_lv, min_lv = self._elite_params
        nx, nu = self.spec.nx, self.spec.nu
        E = Ws[0].shape[0]
        s = torch.as_tensor(self.in_norm.std, dtype=f64)
        om = torch.as_tensor(self.out_norm.mean, dtype=f64)
        osd = torch.as_tensor(self.out_norm.std, dtype=f64)
        W0 = Ws[0].to(f64) / s[:, None]                                   # (E, in, H)
        WL, bL = Ws[-1].to(f64), bs[-1].to(f64)                           # (E, H, 2nx)
        if self.linear is not None:
            A, c, res_std = (torch.as_tensor(a, dtype=f64) for a in self.linear)
            lin = A / s[:, None] * osd                                     # (in, nx)
            const = om + osd * c
            scale = osd * res_std
            lv_shift = 2.0 * torch.log(res_std)
        else:
            lin = torch.zeros(nx + nu, nx, dtype=f64)
            const, scale, lv_shift = om, osd, torch.zeros(nx, dtype=f64)
        first_w = torch.cat([W0, lin.expand(E, nx + nu, nx)], dim=2)     # (E, in, H + nx)
        first_b = torch.cat([bs[0].to(f64), bL[..., :nx] * scale + const], dim=2)
        self._folded64 = {
            "x_mean": torch.as_tensor(self.in_norm.mean[:nx], dtype=f64),
            "u_mean": torch.as_tensor(self.in_norm.mean[nx:], dtype=f64),
            "first_w": first_w.contiguous(), "first_b": first_b.contiguous(),
            "hidden": [(W.to(f64), b.to(f64)) for W, b in zip(Ws[1:-1], bs[1:-1])],
            "last_mean": (WL[..., :nx] * scale).contiguous(), "last_lv": WL[..., nx:],
            "last_lv_b": bL[..., nx:] + lv_shift, "out_std": osd,
            "max_lv": max_lv.to(f64), "min_lv": min_lv.to(f64), "H": Ws[0].shape[2]}
        return self._folded64

    def _fold(self) -> dict:
        """:meth:`_fold64` in ``torch_dtype`` (cached), for the torch rollouts."""
        if self._folded is not None:
            return self._folded
        f = self._fold64()
        def t(a):
            return a.to(self.torch_dtype).contiguous()
        self._folded = {k: ([(t(W), t(b)) for W, b in v] if k == "hidden"
                            else v if k == "H" else t(v)) for k, v in f.items()}
        # the log-variance bounds as the network holds them (no round trip via float64)
        self._folded["max_lv"], self._folded["min_lv"] = self._elite_params[2:]
        return self._folded

    def _rollout_stepwise(self, x0, U, mode, generator, sample, out, disagreement):
        """:meth:`rollout` by :meth:`propagate` steps (same member assignment): for models
        with sin/cos inputs, which :meth:`_fold`'s affine first layer cannot take."""
        n, T, _ = U.shape
        nx = self.spec.nx
        xs = out if out is not None else torch.empty((T + 1, n, nx), dtype=self.torch_dtype)
        x = x0.expand(n, nx) if x0.ndim == 1 else x0
        xs[0] = x
        member = torch.arange(n) % self.n_elite if mode == "tsinf" else None
        for t in range(T):
            u = U[:, t]
            if disagreement is not None and mode == "expectation":
                z = self._norm_in(x, u).unsqueeze(0).expand(self.n_elite, -1, -1)
                disagreement[t] = self._forward_elites(z)[0].var(dim=0, unbiased=False
                                                                 ).mean(dim=-1)
            x = self.propagate(x, u, mode, member, generator, sample=sample)
            xs[t + 1] = x
        return xs

    def _rollout_chunk(self, f: dict, z: torch.Tensor, E: int
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of every member on its rows z (E or 1, r, nx + nu) = centred [x, u]
        (a batch of 1 is shared by all members). Returns the state change (E, r, nx) in
        state units (the members' means) and the last hidden activations (E, r, H)."""
        H = f["H"]
        # One product gives the first layer's pre-activations and, in the last nx
        # columns, the affine part of the output (linear prior + de-normalisation).
        pre = torch.baddbmm(f["first_b"], z.expand(E, -1, -1), f["first_w"])
        h = self._act(pre[..., :H])
        inplace = self._act is F.silu
        for W, b in f["hidden"]:
            h = torch.baddbmm(b, h, W)
            h = F.silu(h, inplace=True) if inplace else self._act(h)
        return torch.baddbmm(pre[..., H:], h, f["last_mean"]), h

    @torch.no_grad()
    def rollout(self, x0: torch.Tensor, U: torch.Tensor, mode: str = "tsinf",
                generator: torch.Generator | None = None, sample: bool = True,
                out: torch.Tensor | None = None,
                disagreement: torch.Tensor | None = None) -> torch.Tensor:
        """Open-loop rollouts of n action sequences over T steps, in one call.

        The same states as T calls of :meth:`propagate` (up to rounding) with the member
        assignment the sampling planners use, and the same draws from ``generator``,
        without the per-step overhead: every step is one batched product per layer over
        (E, n / E, .) blocks, and the normalisers and the linear prior are folded into
        the weights (:meth:`_fold`).

        * 'tsinf': row r keeps elite ``r % E`` over the horizon (``propagate(x, u,
          'tsinf', arange(n) % E, generator)`` at every step). The rows are regrouped by
          member once per call (member-major blocks), so the steps need no gather,
          scatter or concatenation.
        * 'ts1': every step draws a new balanced random assignment, exactly as
          ``propagate(x, u, 'ts1', generator=generator)`` does (one gather and one
          scatter of the (n, nx + nu) rows per step).
        * 'expectation': the mean of the elites at every step (deterministic).

        Args:
            x0: (nx,) or (n, nx) initial states (``torch_dtype``).
            U: (n, T, nu) actions.
            mode: 'tsinf', 'ts1' (n must be a multiple of E for both) or 'expectation'.
            generator: torch generator for the member draws ('ts1') and the Gaussian
                noise (``sample``).
            sample: TS modes only: add each member's predicted Gaussian noise (PETS).
            out: optional contiguous (T+1, n, nx) tensor to write the states into.
            disagreement: 'expectation' only: optional (T, n) tensor that receives
                :meth:`uncertainty` at every step's (x_t, u_t) (variance of the elites'
                normalised means, averaged over dimensions), from the same forward pass.

        Returns:
            xs (T+1, n, nx) states, xs[0] = x0, state units.

        Raises:
            ModelError: unknown mode, wrong shapes, n not a multiple of E.
        """
        self._require_fitted()
        spec = self.spec
        if U.ndim != 3 or U.shape[2] != spec.nu:
            raise ModelError(f"expected U (n, T, {spec.nu}), got {tuple(U.shape)}")
        n, T, nu = U.shape
        nx = spec.nx
        if tuple(x0.shape) not in ((nx,), (n, nx)):
            raise ModelError(f"expected x0 ({nx},) or ({n}, {nx}), got {tuple(x0.shape)}")
        if mode not in MODES:
            raise ModelError(f"unknown propagation mode {mode!r}; one of {', '.join(MODES)}")
        E = self.n_elite
        if mode != "expectation" and n % E:
            raise ModelError(f"rollout(mode={mode!r}) needs a multiple of {E} rows, got {n}")
        if self.features.periodic.size:
            return self._rollout_stepwise(x0, U, mode, generator, sample, out, disagreement)
        f = self._fold()
        dt = self.torch_dtype
        if out is None:
            out = torch.empty((T + 1, n, nx), dtype=dt)
        elif tuple(out.shape) != (T + 1, n, nx) or out.dtype != dt or not out.is_contiguous():
            raise ModelError(f"out must be a contiguous ({T + 1}, {n}, {nx}) {dt} tensor")
        if disagreement is not None and (mode != "expectation"
                                         or tuple(disagreement.shape) != (T, n)):
            raise ModelError(f"disagreement needs mode 'expectation' and shape ({T}, {n})")
        U = U.to(dt)
        x0c = x0.to(dt) - f["x_mean"]
        if mode == "tsinf":
            self._rollout_tsinf(f, x0c, U, generator, sample, out)
        elif mode == "ts1":
            self._rollout_ts1(f, x0c, U, generator, sample, out)
        else:
            # One block shared by all members; their mean is the step.
            Z = torch.empty((T + 1, 1, n, nx + nu), dtype=dt)
            torch.sub(U.transpose(0, 1)[:, None], f["u_mean"], out=Z[:T, ..., nx:])
            Z[T, ..., nx:] = 0.0
            Zx = Z[..., :nx]
            Zx[0] = x0c
            inv_var = 1.0 / f["out_std"] ** 2
            for t in range(T):
                for a in range(0, n, _network._CHUNK):
                    b = min(n, a + _network._CHUNK)
                    d, _ = self._rollout_chunk(f, Z[t, :, a:b], E)
                    torch.add(Zx[t, :, a:b], d.mean(dim=0, keepdim=True),
                              out=Zx[t + 1, :, a:b])
                    if disagreement is not None:
                        # The members differ only in the network part: d_e = out_std *
                        # (normalised mean_e) + a member-independent term.
                        disagreement[t, a:b] = (d.var(dim=0, unbiased=False)
                                                * inv_var).mean(dim=-1)
            torch.add(Zx[:, 0], f["x_mean"], out=out)
        return out

    def _rollout_tsinf(self, f: dict, x0c: torch.Tensor, U: torch.Tensor,
                       generator: torch.Generator | None, sample: bool,
                       out: torch.Tensor) -> None:
        n, T, nu = U.shape
        nx, E, dt = self.spec.nx, self.n_elite, self.torch_dtype
        k = n // E
        # Z[t] = centred [x_t, u_t] grouped by member: row r = j E + e is block [e, j],
        # member-major, so each step reads contiguous (k, nx + nu) blocks.
        Z = torch.empty((T + 1, E, k, nx + nu), dtype=dt)
        Zx = Z[..., :nx]
        torch.sub(U.view(k, E, T, nu).permute(2, 1, 0, 3), f["u_mean"], out=Z[:T, ..., nx:])
        Z[T, ..., nx:] = 0.0
        Zx[0] = x0c.view(k, E, nx).transpose(0, 1) if x0c.ndim == 2 else x0c
        for t in range(T):
            noise = None
            if sample:
                # propagate draws (n, nx) noise in row order: the same numbers, regrouped.
                noise = torch.randn((k, E, nx), generator=generator, dtype=dt).transpose(0, 1)
            # Long particle sets in chunks of _network._CHUNK rows per member, whose hidden
            # activations stay in cache.
            for a in range(0, k, _network._CHUNK):
                b = min(k, a + _network._CHUNK)
                d, h = self._rollout_chunk(f, Z[t, :, a:b], E)
                nxt = Zx[t + 1, :, a:b]
                torch.add(Zx[t, :, a:b], d, out=nxt)
                if noise is not None:
                    nxt.addcmul_(self._noise_std(f, h), noise[:, a:b])
        # Back to row order and state units.
        torch.add(Zx.permute(0, 2, 1, 3), f["x_mean"], out=out.view(T + 1, k, E, nx))

    def _rollout_ts1(self, f: dict, x0c: torch.Tensor, U: torch.Tensor,
                     generator: torch.Generator | None, sample: bool,
                     out: torch.Tensor) -> None:
        n, T, nu = U.shape
        nx, E, dt = self.spec.nx, self.n_elite, self.torch_dtype
        k = n // E
        d_in = nx + nu
        # Rows stay in row order; every step gathers them into member blocks and back.
        Z = torch.empty((T + 1, n, d_in), dtype=dt)
        Zx = Z[..., :nx]
        torch.sub(U.transpose(0, 1), f["u_mean"], out=Z[:T, :, nx:])
        Z[T, :, nx:] = 0.0
        Zx[0] = x0c
        delta = torch.empty((n, nx), dtype=dt)
        rows = torch.arange(n)
        inv = torch.empty(n, dtype=torch.long)
        for t in range(T):
            # The draw of propagate('ts1') (draw_members: row r -> member perm[r] % E), and
            # the rows grouped by member without a sort: with inv the inverse permutation,
            # inv[v] for v = j, j + E, ... are member j's rows.
            perm = torch.randperm(n, generator=generator)
            inv[perm] = rows
            order = inv.view(k, E).t().reshape(-1)
            zg = Z[t].index_select(0, order).view(E, k, d_in)
            dg = delta.view(E, k, nx)
            std = torch.empty((E, k, nx), dtype=dt) if sample else None
            for a in range(0, k, _network._CHUNK):
                b = min(k, a + _network._CHUNK)
                d, h = self._rollout_chunk(f, zg[:, a:b], E)
                dg[:, a:b] = d
                if std is not None:
                    std[:, a:b] = self._noise_std(f, h)
            nxt = Zx[t + 1]
            nxt.copy_(Zx[t])
            nxt.index_add_(0, order, delta)
            if std is not None:
                noise = torch.randn((n, nx), generator=generator, dtype=dt)
                s_rows = torch.empty((n, nx), dtype=dt)
                s_rows[order] = std.view(n, nx)
                nxt.addcmul_(s_rows, noise)
        torch.add(Zx, f["x_mean"], out=out)

    def _noise_std(self, f: dict, h: torch.Tensor) -> torch.Tensor:
        """Standard deviation (state units) of each member's Gaussian from the last hidden
        activations h (E, r, H), with the soft log-variance clamp of the forward pass."""
        raw = torch.baddbmm(f["last_lv_b"], h, f["last_lv"])
        max_lv, min_lv = f["max_lv"], f["min_lv"]
        logvar = max_lv - F.softplus(max_lv - raw)
        logvar = min_lv + F.softplus(logvar - min_lv)
        return torch.exp(0.5 * logvar) * f["out_std"]


    @torch.no_grad()
    def member_outputs(self, x: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs of ALL members (not only elites), for diagnostics.

        Returns:
            mean, logvar: (M, B, nx) float64 of the normalised state change.
        """
        self._require_fitted()
        x, u = check_xu(self.spec, x, u)
        z = torch.as_tensor(self.in_norm(self.features(x, u)), dtype=self.torch_dtype)
        mean, logvar = self._forward_all(z.unsqueeze(0).expand(self.settings.members, -1, -1))
        return mean.numpy().astype(np.float64), logvar.numpy().astype(np.float64)

    def logvar_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Learned (min_logvar, max_logvar), each (M, nx) float64, normalised units.

        The soft clamp keeps every member log-variance in
        ``[min, min + softplus(max - min)]``; the upper edge exceeds ``max`` by less than
        ``exp(min - max)``.
        """
        self._require_fitted()
        return (self.min_logvar.detach().numpy()[:, 0].astype(np.float64),
                self.max_logvar.detach().numpy()[:, 0].astype(np.float64))
