"""PDE problems for physics-informed training: domain, PDE residual, initial/boundary conditions and a
reference solution on a grid (exact, or computed here with numpy/scipy and cached; never downloaded).

Definitions follow PDEBench's PINN code (DeepXDE) and the DeepXDE Burgers example:
- `advection`: u_t + β u_x = 0, β = 0.1, x ∈ [0, 1], t ∈ [0, 2], periodic (PDEBench's first problem);
  exact u = u0(x − βt), u0 = sin 2πx + ½ sin 4πx (PDEBench draws random sine sums; one fixed one here).
- `reaction_diffusion`: u_t − ν u_xx − ρ u(1 − u) = 0, ν = 0.5, ρ = 1 (PDEBench's 1D ReacDiff
  coefficients), x ∈ [0, 1], t ∈ [0, 1], periodic; reference: Fourier pseudo-spectral method of lines.
- `burgers`: u_t + u u_x − ν u_xx = 0, ν = 0.01/π, x ∈ [−1, 1], t ∈ [0, 1], u0 = −sin πx, u(±1) = 0;
  reference: the Cole–Hopf integral by Gauss–Hermite quadrature (how Raissi's burgers_shock data was made).
- `diffusion_reaction`: PDEBench's 2D FitzHugh–Nagumo, u_t = d1 Δu + u − u³ − k − v, v_t = d2 Δv + u − v,
  d1 = 1e-3, d2 = 5e-3, k = 5e-3, (x, y) ∈ [−1, 1]², t ∈ [0, 5], no-flux (Neumann) boundaries; smooth
  fixed initial fields; reference: cosine-spectral method of lines (scipy solve_ivp).

Inputs are rows (space..., t); the last column is time.  `residual(u, X)` takes the network output u
[N, fields] computed from X [N, d] with X.requires_grad, and returns the residual [N, fields] via
torch.autograd.grad(create_graph=True): one batched call per field and derivative, no loop over points.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

__all__ = ["Problem", "PROBLEMS", "PROBLEM_NAMES", "get_problem", "grad", "cache_dir"]


def grad(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """∂y/∂x for y [N] computed pointwise from x [N, d] (rows independent): [N, d], differentiable."""
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    return g


def cache_dir() -> Path:
    """Where computed references live: $DCNN_CACHE, else ~/.cache/dcnn-ablate (small .npz files)."""
    return Path(os.environ.get("DCNN_CACHE") or Path.home() / ".cache" / "dcnn-ablate") / "pinn"


@dataclass(frozen=True)
class Reference:
    """u on a grid: `points` [T·S, d] (space..., t), `values` [T·S, fields]; `n_times` slices, last = final time."""

    points: np.ndarray
    values: np.ndarray
    n_times: int
    kind: str  # "exact" or how it was computed


@dataclass(frozen=True)
class Problem:
    name: str
    title: str
    lower: tuple  # domain lower bounds (space..., t)
    upper: tuple
    fields: tuple  # names of the solution's components
    order: int  # highest spatial derivative in the PDE
    boundary: str  # "periodic" | "dirichlet" | "neumann"
    params: dict = field(default_factory=dict)
    kind: str = "exact"

    @property
    def dim(self) -> int:
        return len(self.lower)

    @property
    def n_fields(self) -> int:
        return len(self.fields)

    # -- physics --------------------------------------------------------------------------------
    def initial(self, x: torch.Tensor) -> torch.Tensor:
        """u(x, 0) [N, fields] for spatial points x [N, d−1]."""
        return _INITIAL[self.name](self, x)

    def residual(self, u: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """PDE residual [N, fields] of u = net(X) (physical units)."""
        return _RESIDUAL[self.name](self, u, X)

    def exact(self, X: torch.Tensor) -> torch.Tensor | None:
        """The exact solution where one is known (advection), else None."""
        if self.name == "advection":
            x, t = X[:, :1], X[:, 1:2]
            return _adv_u0(torch.remainder(x - self.params["beta"] * t, 1.0))
        return None

    # -- reference --------------------------------------------------------------------------------
    def reference(self) -> Reference:
        """The reference on its grid: exact, or computed once and cached (checksummed) under cache_dir()."""
        if self.name == "advection":
            x = np.linspace(0.0, 1.0, 128, endpoint=False)
            t = np.linspace(0.0, 2.0, 101)
            P = _grid(t, x)
            u = self.exact(torch.as_tensor(P)).numpy()
            return Reference(P, u, len(t), "exact")
        return _cached(self, _SOLVERS[self.name])

    def cache_key(self) -> str:
        spec = json.dumps({"name": self.name, "params": self.params, "lower": self.lower, "upper": self.upper,
                           "version": _REFERENCE_VERSION}, sort_keys=True)
        return hashlib.sha256(spec.encode()).hexdigest()[:16]


_REFERENCE_VERSION = 1


def _grid(t: np.ndarray, *space: np.ndarray) -> np.ndarray:
    """Rows (space..., t) ordered time-major: slice k is rows [k·S, (k+1)·S)."""
    mesh = np.meshgrid(t, *space, indexing="ij")
    return np.stack([m.ravel() for m in mesh[1:]] + [mesh[0].ravel()], axis=1)


# -- advection -------------------------------------------------------------------------------------
def _adv_u0(x):
    return torch.sin(2 * math.pi * x) + 0.5 * torch.sin(4 * math.pi * x)


def _adv_residual(p, u, X):
    g = grad(u[:, 0], X)
    return (g[:, 1] + p.params["beta"] * g[:, 0])[:, None]


# -- 1D reaction–diffusion (Fisher–KPP) -----------------------------------------------------------
def _rd_u0(x):
    return 0.5 + 0.25 * torch.sin(2 * math.pi * x) + 0.1 * torch.cos(4 * math.pi * x)


def _rd_residual(p, u, X):
    g = grad(u[:, 0], X)
    u_xx = grad(g[:, 0], X)[:, 0]
    return (g[:, 1] - p.params["nu"] * u_xx - p.params["rho"] * u[:, 0] * (1 - u[:, 0]))[:, None]


def _rd_solve(p) -> Reference:
    from scipy.integrate import solve_ivp

    n = 128
    x = np.arange(n) / n
    k = 2 * np.pi * np.fft.rfftfreq(n, d=1.0 / n)
    nu, rho = p.params["nu"], p.params["rho"]

    def rhs(_, u):
        u_xx = np.fft.irfft(-(k**2) * np.fft.rfft(u), n)
        return nu * u_xx + rho * u * (1 - u)

    t = np.linspace(0.0, 1.0, 101)
    u0 = _rd_u0(torch.as_tensor(x)).numpy()
    sol = solve_ivp(rhs, (0.0, 1.0), u0, t_eval=t, method="BDF", rtol=1e-10, atol=1e-12)
    if not sol.success:
        raise RuntimeError(f"reaction_diffusion reference: {sol.message}")
    return Reference(_grid(t, x), sol.y.T.reshape(-1, 1), len(t), "Fourier pseudo-spectral MOL, BDF rtol 1e-10")


# -- Burgers ---------------------------------------------------------------------------------------
def _burgers_u0(x):
    return -torch.sin(math.pi * x)


def _burgers_residual(p, u, X):
    g = grad(u[:, 0], X)
    u_xx = grad(g[:, 0], X)[:, 0]
    return (g[:, 1] + u[:, 0] * g[:, 0] - p.params["nu"] * u_xx)[:, None]


def burgers_cole_hopf(x: np.ndarray, t: np.ndarray, nu: float, n_quad: int = 200) -> np.ndarray:
    """u(x, t) for u0 = −sin πx on R (the solution on [−1, 1] with u(±1) = 0 by symmetry), by Cole–Hopf:
    u = −∫ sin π(x−η) f(x−η) e^{−η²/4νt} dη / ∫ f(x−η) e^{−η²/4νt} dη, f(y) = exp(−cos(πy)/(2πν)),
    with η = √(4νt)·s and Gauss–Hermite nodes s (weights e^{−s²}); the exponent is shifted by its maximum
    (f reaches e^{50} at ν = 0.01/π)."""
    s, w = np.polynomial.hermite.hermgauss(n_quad)
    x, t = np.broadcast_arrays(np.asarray(x, float), np.asarray(t, float))
    out = -np.sin(np.pi * x)  # t = 0
    pos = t > 0
    xp, tp = x[pos][:, None], t[pos][:, None]
    y = xp - np.sqrt(4 * nu * tp) * s[None, :]
    expo = -np.cos(np.pi * y) / (2 * np.pi * nu)
    f = w[None, :] * np.exp(expo - expo.max(axis=1, keepdims=True))
    out[pos] = -(np.sin(np.pi * y) * f).sum(1) / f.sum(1)
    return out


def _burgers_solve(p) -> Reference:
    x = np.linspace(-1.0, 1.0, 256)
    t = np.linspace(0.0, 1.0, 101)
    P = _grid(t, x)
    u = burgers_cole_hopf(P[:, 0], P[:, 1], p.params["nu"])
    return Reference(P, u[:, None], len(t), "Cole-Hopf, Gauss-Hermite 200 nodes")


# -- 2D FitzHugh–Nagumo diffusion–reaction ---------------------------------------------------------
def _dr_u0(xy):
    x, y = xy[:, 0], xy[:, 1]
    u = 0.6 * torch.cos(math.pi * x) * torch.cos(math.pi * y) + 0.2 * torch.cos(2 * math.pi * x)
    v = 0.3 * torch.cos(math.pi * y) - 0.1 * torch.cos(math.pi * x)
    return torch.stack([u, v], 1)


def _dr_residual(p, uv, X):
    d1, d2, k = p.params["d1"], p.params["d2"], p.params["k"]
    out = []
    lap = []
    for f in range(2):
        g = grad(uv[:, f], X)
        lap.append(grad(g[:, 0], X)[:, 0] + grad(g[:, 1], X)[:, 1])
        out.append(g[:, 2])
    u, v = uv[:, 0], uv[:, 1]
    r1 = out[0] - (d1 * lap[0] + u - u**3 - k - v)
    r2 = out[1] - (d2 * lap[1] + u - v)
    return torch.stack([r1, r2], 1)


def _dr_solve(p) -> Reference:
    from scipy.fft import dctn, idctn
    from scipy.integrate import solve_ivp

    n = 32  # cell-centred grid on [−1, 1]²: DCT-II diagonalises the no-flux Laplacian spectrally
    x = -1 + (np.arange(n) + 0.5) * 2 / n
    kk = (np.pi * np.arange(n) / 2.0) ** 2  # cos(jπ(x+1)/2) has −(jπ/2)² as second derivative
    lam = -(kk[:, None] + kk[None, :])
    d1, d2, k = p.params["d1"], p.params["d2"], p.params["k"]

    def lap(a):
        return idctn(lam * dctn(a, type=2, norm="ortho"), type=2, norm="ortho")

    def rhs(_, y):
        u, v = y[: n * n].reshape(n, n), y[n * n:].reshape(n, n)
        du = d1 * lap(u) + u - u**3 - k - v
        dv = d2 * lap(v) + u - v
        return np.concatenate([du.ravel(), dv.ravel()])

    X, Y = np.meshgrid(x, x, indexing="ij")
    uv0 = _dr_u0(torch.as_tensor(np.stack([X.ravel(), Y.ravel()], 1))).numpy()
    t = np.linspace(0.0, 5.0, 26)
    sol = solve_ivp(rhs, (0.0, 5.0), np.concatenate([uv0[:, 0], uv0[:, 1]]), t_eval=t, method="RK45",
                    rtol=1e-9, atol=1e-11)
    if not sol.success:
        raise RuntimeError(f"diffusion_reaction reference: {sol.message}")
    u = sol.y[: n * n].T.reshape(-1)  # [T, n·n] time-major, (x, y) in meshgrid 'ij' order
    v = sol.y[n * n:].T.reshape(-1)
    return Reference(_grid(t, x, x), np.stack([u, v], 1), len(t), "cosine-spectral MOL, RK45 rtol 1e-9")


_INITIAL: dict[str, Callable] = {
    "advection": lambda p, x: _adv_u0(x[:, 0])[:, None],
    "reaction_diffusion": lambda p, x: _rd_u0(x[:, 0])[:, None],
    "burgers": lambda p, x: _burgers_u0(x[:, 0])[:, None],
    "diffusion_reaction": lambda p, x: _dr_u0(x),
}
_RESIDUAL = {"advection": _adv_residual, "reaction_diffusion": _rd_residual, "burgers": _burgers_residual,
             "diffusion_reaction": _dr_residual}
_SOLVERS = {"reaction_diffusion": _rd_solve, "burgers": _burgers_solve, "diffusion_reaction": _dr_solve}

PROBLEMS = {
    "advection": Problem("advection", "1D advection, β = 0.1, periodic", (0.0, 0.0), (1.0, 2.0), ("u",), 1,
                         "periodic", {"beta": 0.1}),
    "reaction_diffusion": Problem("reaction_diffusion", "1D diffusion–reaction (Fisher), ν = 0.5, ρ = 1, periodic",
                                  (0.0, 0.0), (1.0, 1.0), ("u",), 2, "periodic", {"nu": 0.5, "rho": 1.0}, "computed"),
    "burgers": Problem("burgers", "Burgers, ν = 0.01/π, Dirichlet", (-1.0, 0.0), (1.0, 1.0), ("u",), 2, "dirichlet",
                       {"nu": 0.01 / math.pi}, "computed"),
    "diffusion_reaction": Problem("diffusion_reaction", "2D diffusion–reaction (FitzHugh–Nagumo), Neumann",
                                  (-1.0, -1.0, 0.0), (1.0, 1.0, 5.0), ("u", "v"), 2, "neumann",
                                  {"d1": 1e-3, "d2": 5e-3, "k": 5e-3}, "computed"),
}
PROBLEM_NAMES = tuple(PROBLEMS)


def get_problem(name: str) -> Problem:
    if name not in PROBLEMS:
        raise ValueError(f"unknown PINN problem {name!r}; known: {', '.join(PROBLEM_NAMES)}")
    return PROBLEMS[name]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(p: Problem, solve: Callable[[Problem], Reference]) -> Reference:
    """Load `p`'s reference from the cache if its checksum matches; else compute and store it atomically
    (a checksum that does not match means a damaged file: recomputed, never trusted)."""
    d = cache_dir()
    path = d / f"{p.name}-{p.cache_key()}.npz"
    sums = path.with_suffix(".sha256")
    if path.exists() and sums.exists() and sums.read_text().strip() == _sha256(path):
        with np.load(path, allow_pickle=False) as z:
            return Reference(z["points"], z["values"], int(z["n_times"]), str(z["kind"]))
    ref = solve(p)
    d.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez(tmp, points=ref.points, values=ref.values, n_times=ref.n_times, kind=ref.kind)
    digest = _sha256(tmp)
    os.replace(tmp, path)
    tmp_sum = sums.with_name(f".{sums.name}.{os.getpid()}.tmp")
    tmp_sum.write_text(digest + "\n")
    os.replace(tmp_sum, sums)
    return ref
