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

so the sum costs O(E·L²·F) instead of O(T·F·L), with no triplet index table.  The sums run on a padded
layout of the edges into each atom (`neighbour_table`: [A, K], K = the largest in-degree, made once per
batch outside the differentiable step like the neighbour lists): the density of every atom is one batched
matmul over its K edges, and so is the read by the edges at the atom; each model folds the parts of its
basis that are the same in every block (DimeNet++'s radial basis, GemNet's rbf_W1) into a padded tensor
made once per forward (`dcnn.models.dimenetpp.DensityAngles`, `dcnn.models.gemnet_t.DensityAngles`), so
no [E, F, L²] tensor is materialised, forward or in the double backward of force training (measured: the
DimeNet++ step on mlearn Mo 1.8× faster than the index_add density it replaced, docs/speed.md).  The
excluded edge (DimeNet's back-track k = i, GemNet's edge itself) is subtracted exactly.  This is the same
function (tests/test_models_angular.py checks it against the triplet sums of
`dcnn.atomistic.graph.triplets` and `dcnn.models.gemnet_t.triplet_table`, values and double-backward
gradients), evaluated in another order: the density trick of ACE and MACE applied to DimeNet's and
GemNet's bases.  One difference by construction: GemNet clamps each triplet's cosine to [−1, 1]
(fairchem's `inner_product_normalized`), which matters only at rounding level and zeroes the gradient of an
exactly collinear triplet; here there is no cosine to clamp.
"""
from __future__ import annotations

import math

import torch

__all__ = ["legendre_cbf", "real_spherical_harmonics", "harmonic_orders", "triplets_per_edge", "sum_by_density",
           "neighbour_table", "density_tables", "padded_edges", "gather_padded", "order_of_harmonics",
           "density_weight", "DENSITY_TABLE", "DENSITY_SLOT"]


# Triplets per edge, per harmonic (L²), from which the density sum is used, per model: measured
# (2026-12-06, 2 cores AMD EPYC, one thread, eager energy+force step with its double backward, `small`, L = 5,
# batches of 20): DimeNet++ triplets 1.29× faster than the density at 7 triplets per edge (ethanol), the
# density 1.76× faster at 19 (aspirin); GemNet-T triplets 1.15× faster at 7, the two equal at 19.  Both
# grow with the harmonics' count L² on one side and the triplets per edge on the other.
DENSITY_FROM = {"dimenetpp": 0.5, "gemnet_t": 0.8}


def triplets_per_edge(edge_index: torch.Tensor, n_atoms: int) -> float:
    """Mean count of the other edges into the atom an edge leaves or enters (the graph is paired: in-degree
    = out-degree): the triplets per edge of DimeNet's (k → j → i, back-track excluded) and GemNet's
    (other edges into the same atom) sums.  One host read."""
    if edge_index.shape[1] == 0:
        return 0.0
    degree = torch.bincount(edge_index[1], minlength=n_atoms)
    return float(degree.index_select(0, edge_index[0]).double().mean()) - 1.0


def sum_by_density(model: str, edge_index: torch.Tensor, n_atoms: int, n_orders: int) -> bool:
    """Whether the density sum is the cheaper way for `model` to sum over this graph's triplets
    (`DENSITY_FROM`)."""
    return triplets_per_edge(edge_index, n_atoms) >= DENSITY_FROM[model] * n_orders ** 2


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


def neighbour_table(target: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(table [A, K], slot [E]): the edges into each atom, padded to K = the largest in-degree — row a lists
    the edges whose target is a, in edge order, short rows padded with E — and each edge's place in it
    (row·K + column).  The layout the density sums run on (`gather_padded`).  Index arithmetic (one host
    read: K), made once per batch outside the differentiable step (`DENSITY_TABLE`, `DENSITY_SLOT`)."""
    n_edges = target.shape[0]
    into = torch.bincount(target, minlength=n_atoms)  # [A] in-degrees
    k = max(int(into.max()), 1) if n_edges else 1
    order = torch.argsort(target, stable=True)  # edges grouped by the atom they point into
    grouped = target.index_select(0, order)
    rank = torch.arange(n_edges, device=target.device) - (torch.cumsum(into, 0) - into).index_select(0, grouped)
    slot = torch.empty_like(order).scatter_(0, order, grouped * k + rank)
    table = torch.full((n_atoms * k,), n_edges, dtype=torch.long, device=target.device)
    table.scatter_(0, slot, torch.arange(n_edges, device=target.device))
    return table.view(n_atoms, k), slot


DENSITY_TABLE = "density_table"  # graph.extras: `neighbour_table`'s table [A, K]
DENSITY_SLOT = "density_slot"  # graph.extras: `neighbour_table`'s slot [E]


def density_tables(extras: dict, target: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(table, slot) of `neighbour_table` from the graph's extras (`prepare_graph` put them there), else
    made now (eager calls on a graph nobody prepared)."""
    if DENSITY_TABLE in extras:
        return extras[DENSITY_TABLE], extras[DENSITY_SLOT]
    return neighbour_table(target, n_atoms)


def padded_edges(table: torch.Tensor, n_edges) -> tuple[torch.Tensor, torch.Tensor]:
    """(edge [A, K], valid [A, K] bool): the table's edges with the padding pointed at edge 0, and where the
    padding is (a gather through `edge` reads edge 0 there: callers zero it through a factor that is 0 at
    the padding, so it contributes exactly 0 and receives a zero gradient)."""
    valid = table < n_edges
    return torch.where(valid, table, torch.zeros_like(table)), valid


def gather_padded(x: torch.Tensor, edge: torch.Tensor) -> torch.Tensor:
    """[E, ...] edge rows → [A, K, ...]: x[edge[a, k]] (the padding reads edge 0: see `padded_edges`)."""
    a, k = edge.shape
    return x.index_select(0, edge.reshape(-1)).view(a, k, *x.shape[1:])


def order_of_harmonics(n_orders: int, device: torch.device) -> torch.Tensor:
    """[L²] long: l of each harmonic of `real_spherical_harmonics` (to expand a per-order tensor to them)."""
    return torch.tensor(harmonic_orders(n_orders), device=device)


def density_weight(n_orders: int, like: torch.Tensor) -> torch.Tensor:
    """[L²]: √(4π/(2l+1)) of each harmonic: Σ_m Y_lm(u)·Y_lm(v)·√(4π/(2l+1)) = Y_l0(u·v)."""
    return like.new_tensor([math.sqrt(4 * math.pi / (2 * l + 1)) for l in harmonic_orders(n_orders)])
