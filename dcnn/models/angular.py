"""Sums over edge triplets without the triplets: the angular basis of DimeNet++ and GemNet-T, and the
triplet sums of their interaction blocks computed through per-atom densities (the addition theorem).

Both models sum, for every edge e whose angle sits at atom a, over every other edge e' at a:

    out[e, f, l] = Σ_{e' into a, e' ≠ excl(e)}  Y_l0(u_e' · u_e) · M[e', f, l]

with Y_l0(cos) = √((2l+1)/4π)·P_l(cos) (`legendre_cbf`).  Done triplet by triplet that is T ≈ E·k terms (k:
neighbours per atom, ≈ 48 on dense periodic cells at 6 Å), and every [T, ·] tensor is materialised again in
the double backward of force training.  The addition theorem of the real spherical harmonics,
P_l(u·v) = 4π/(2l+1)·Σ_m Y_lm(u)·Y_lm(v), factors each term into a part of e' and a part of e:

    out[e, f, l] = √(4π/(2l+1)) Σ_m Y_lm(u_e) · D[a, f, lm]  −  Y_l0(u_excl · u_e)·M[excl, f, l],
    D[a, f, lm] = Σ_{e' into a} Y_lm(u_e') · M[e', f, l]

so the sum costs O(E·L²·F) instead of O(T·F·L): no triplet index table at all (nothing to build per batch),
and only [E, F, L²] and [A, F, L²] tensors.  The excluded edge (DimeNet's back-track k = i, GemNet's edge
itself) is subtracted exactly.  This is the same function (tests/test_models_angular.py checks it against the
triplet sums of `dcnn.atomistic.graph.triplets` and `dcnn.models.gemnet_t.triplet_table`, values and
double-backward gradients), evaluated in another order: the density trick of ACE and MACE applied to
DimeNet's and GemNet's bases.  One difference by construction: GemNet clamps each triplet's cosine to
[−1, 1] (fairchem's `inner_product_normalized`), which matters only at rounding level and zeroes the gradient
of an exactly collinear triplet; here there is no cosine to clamp.
"""
from __future__ import annotations

import math

import torch

__all__ = ["legendre_cbf", "real_spherical_harmonics", "harmonic_orders", "density_sum", "triplets_per_edge",
           "sum_by_density"]


# Measured (benchmarks/bench_models.py, DimeNet++ small, L = 5, 2 cores AMD EPYC, 2026-12-06): the density sum
# and the triplet-by-triplet sum cost the same at ≈ 19 triplets per edge (aspirin's complete graph), the
# triplets are 1.9× faster at 7 (ethanol), the density 2.9× at 47 (the catalysis slabs).  Both grow with
# the harmonics' count L² on one side and the triplets per edge on the other.
DENSITY_FROM = 0.8  # triplets per edge, per harmonic (L²), from which the density sum is used


def triplets_per_edge(edge_index: torch.Tensor, n_atoms: int) -> float:
    """Mean count of the other edges into the atom an edge leaves or enters (the graph is paired: in-degree
    = out-degree): the triplets per edge of DimeNet's (k → j → i, back-track excluded) and GemNet's
    (other edges into the same atom) sums.  One host read."""
    if edge_index.shape[1] == 0:
        return 0.0
    degree = torch.bincount(edge_index[1], minlength=n_atoms)
    return float(degree.index_select(0, edge_index[0]).double().mean()) - 1.0


def sum_by_density(edge_index: torch.Tensor, n_atoms: int, n_orders: int) -> bool:
    """Whether `density_sum` is the cheaper way to sum over this graph's triplets (`DENSITY_FROM`)."""
    return triplets_per_edge(edge_index, n_atoms) >= DENSITY_FROM * n_orders ** 2


def legendre_cbf(n_orders: int, cos: torch.Tensor) -> torch.Tensor:
    """Y_l^0 = √((2l+1)/4π)·P_l(cos θ) for l < n_orders (last dim): DimeNet's and GemNet's angular basis."""
    p = [torch.ones_like(cos), cos]
    for l in range(1, n_orders - 1):
        p.append(((2 * l + 1) * cos * p[l] - l * p[l - 1]) / (l + 1))
    pref = cos.new_tensor([math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(n_orders)])
    return torch.stack(p[:n_orders], dim=-1) * pref


def harmonic_orders(n_orders: int) -> list[int]:
    """l of each real harmonic `real_spherical_harmonics` returns, in its order (2l + 1 of each l)."""
    return [l for l, _, _ in _sh_constants(n_orders)]


def _sh_constants(n_orders: int) -> list[tuple[int, int, float]]:
    """(l, m, normalisation) of every real harmonic, l-major, m = 0, 1, −1, 2, −2, ... (any fixed order
    serves: only Σ_m Y_lm(u)·Y_lm(v) is used)."""
    out = []
    for l in range(n_orders):
        for m in [0] + [s * k for k in range(1, l + 1) for s in (1, -1)]:
            k = abs(m)
            norm = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - k) / math.factorial(l + k))
            out.append((l, m, norm * (math.sqrt(2.0) if m else 1.0)))
    return out


def real_spherical_harmonics(n_orders: int, unit: torch.Tensor) -> torch.Tensor:
    """Real spherical harmonics Y_lm(u) of unit vectors `unit` [N, 3] for l < n_orders → [N, n_orders²]
    (l-major, m order of `_sh_constants`), orthonormal on
    the sphere, as polynomials in x, y, z (no angles: smooth everywhere, so double backward is exact):
    Y_l,±m ∝ d^m P_l/dz^m (z) · Re/Im (x+iy)^m.  Y_lm(−u) = (−1)^l Y_lm(u)."""
    x, y, z = unit.unbind(-1)
    # Re / Im of (x + iy)^m by recurrence
    re, im = [torch.ones_like(x)], [torch.zeros_like(x)]
    for m in range(1, n_orders):
        re_m, im_m = x * re[-1] - y * im[-1], x * im[-1] + y * re[-1]
        re.append(re_m)
        im.append(im_m)
    # Π_l^m(z) = d^m P_l / dz^m: Π_m^m = (2m−1)!!, Π_{m+1}^m = (2m+1) z Π_m^m, then the three-term recurrence
    pi: dict[tuple[int, int], torch.Tensor] = {}
    for m in range(n_orders):
        pi[m, m] = torch.full_like(z, float(math.prod(range(1, 2 * m, 2))))
        if m + 1 < n_orders:
            pi[m + 1, m] = (2 * m + 1) * z * pi[m, m]
        for l in range(m + 2, n_orders):
            pi[l, m] = ((2 * l - 1) * z * pi[l - 1, m] - (l + m - 1) * pi[l - 2, m]) / (l - m)
    out = [norm * pi[l, abs(m)] * (re[m] if m >= 0 else im[-m]) for l, m, norm in _sh_constants(n_orders)]
    return torch.stack(out, dim=-1)


def density_sum(messages: torch.Tensor, harmonics_in: torch.Tensor, into: torch.Tensor,
                harmonics_out: torch.Tensor, at: torch.Tensor, n_atoms: int, per_order: bool) -> torch.Tensor:
    """out[e, :, l] = Σ_{e' : into[e'] = at[e]} Y_l0(u_e'·u_e)·messages[e', :, l] for every edge e →
    [E, F, L] (per_order) or summed over l, [E, F].

    messages [E, F, L] (or [E, F, 1]: the same for every l); harmonics_in [E, L²] = Y_lm(u_e') of each
    summed edge, harmonics_out [E, L²] = Y_lm(u_e) of each receiving edge (`real_spherical_harmonics`).  The
    summands Y_lm(u_e')·messages[e', :, l] are summed per atom (`into`) into the density [A, F, L²], which
    each receiving edge reads at its atom `at` and contracts with √(4π/(2l+1))·Y_lm(u_e).  By the addition
    theorem the sum runs over *every* edge e' at the atom: the caller subtracts the one it excludes.
    Harmonics last and per-order sums as matmuls with a 0/1 matrix: every op streams over contiguous rows,
    in the forward and both backward passes."""
    n_h = harmonics_in.shape[-1]
    n_orders = math.isqrt(n_h)
    ls = harmonic_orders(n_orders)
    orders = torch.nn.functional.one_hot(torch.tensor(ls, device=messages.device), n_orders).to(messages.dtype)
    if messages.shape[-1] > 1:
        messages = messages @ orders.T  # [E, F, L²]: each order's message on its 2l + 1 harmonics
    summands = messages * harmonics_in.unsqueeze(1)  # [E, F, L²]
    density = summands.new_zeros(n_atoms, *summands.shape[1:]).index_add(0, into, summands)
    weight = harmonics_out.new_tensor([math.sqrt(4 * math.pi / (2 * l + 1)) for l in ls])
    product = density.index_select(0, at) * (harmonics_out * weight).unsqueeze(1)  # [E, F, L²]
    return product @ orders if per_order else product.sum(-1)
