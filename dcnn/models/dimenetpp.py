"""DimeNet++ (Gasteiger et al. 2020) on the graph layout (dcnn.atomistic.graph.AtomicGraph), energy-
conserving, in plain torch: molecules (a complete graph), slabs and crystals (periodic images in the edge
list) alike.

Same function as PyG's `DimeNetPlusPlus` (same layers and parameter shapes; `load_pyg_` copies weights)
with these differences:

* Forces are −∂E/∂x through *every* geometric term: distances and the triplet angles are computed from
  the edge vectors r_ji = x_j − x_i + S_ji·cell of the positions the caller differentiates (the paper's
  wrapper took angles from `pos.detach()`, which drops the angular part of the forces).  The angle enters
  only through cos θ (the spherical basis is a polynomial in cos θ), computed as a dot product of unit
  vectors: no atan2/cross-product norm, whose gradient is singular for collinear triplets.
* Triplets k → j → i are pairs of edges (kj, ji) (`dcnn.atomistic.graph.triplets` lists them); with
  periodic images only the exact back-track (k = i, S_kj + S_ji = 0) is excluded, so another image of i is
  a k like any atom.  The angle (PyG's convention: between r_ji and r_kj, the supplement of the angle at j)
  is taken between the edge vectors themselves, images included, so it is the angle of the atoms' actual
  images.  The interaction's sum over the triplets is not done triplet by triplet: its two bias-free
  projections of the spherical basis are one linear map, which splits into a part of the edge kj (the
  radial basis of d_kj, the message m_kj) and Y_l0(cos θ); the addition theorem then turns the sum over k
  into a per-atom density contracted with the harmonics of the edge ji (`DensityAngles`, on
  `dcnn.models.angular`'s padded layout of the edges into each atom), minus the back-track.  Same
  function, O(E·L²) instead of O(T) work, and no triplet table, on graphs with many neighbours per atom
  (≥ 0.5·L² triplets per edge, `dcnn.models.angular.sum_by_density`); molecules with few keep the
  triplet table (`TripletAngles`), which is faster there.
* Fixed-size molecules train on the complete graph (every ordered pair) and pairs beyond the cutoff are
  switched off by DimeNet's own envelope: every path from an edge's message to the energy is multiplied
  by a basis function of that edge (output blocks: lin_rbf(rbf_ji)·m_ji; interaction blocks:
  lin_rbf(rbf_kj)·m_kj before the down projection and sbf(d_kj, θ) after it; all these linear maps have
  no bias), and the basis carries the envelope u(d/c), which is exactly 0 beyond the cutoff and vanishes
  with its first two derivatives at it.  So E equals the energy on the radius graph (PyG's, and what
  periodic data use), E is C² in the positions as atoms cross the cutoff, and F = −∇E is conservative.
  (PyG's neighbour cap `max_num_neighbors` does not exist here.)
* What depends only on a distance (the radial bases) is computed once per *pair* — the graph's edges come
  paired, edge m and m + P reverses — and broadcast over both directions as a view; messages are
  gathered and scattered with index_select/index_add (no torch_scatter/torch_sparse, no Python loops).
* The Bessel zeros and normalizers are exact (float64, scipy); PyG's reference code rounds them to
  float32 (`load_pyg_` installs PyG's rounded values).  The spherical-Bessel radial part of the
  triplet basis is evaluated in float64 even for a float32 model: its closed forms cancel badly at small
  arguments (j_l(x) ~ x^l while the terms are ~ x^−l−1), which in float32 costs most digits for l ≳ 5.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dcnn.activations import get_activation
from dcnn.atomistic.graph import AtomicGraph, triplets
from dcnn.models.angular import (DENSITY_SLOT, DENSITY_TABLE, density_tables, density_weight, gather_padded,
                                 legendre_cbf, neighbour_table, order_of_harmonics, padded_edges,
                                 real_spherical_harmonics, sum_by_density)
from dcnn.models.common import sum_per_structure

DIMENETPP_PRESETS = {
    "small": dict(hidden=32, blocks=2, int_emb=16, basis_emb=8, out_emb=32, spherical=5, radial=4,
                  cutoff=6.0),
    "paper": dict(hidden=192, blocks=3, int_emb=64, basis_emb=8, out_emb=192, spherical=7, radial=6,
                  cutoff=6.0),
}


# ----------------------------------------------------------------------------- basis functions

def _spherical_jn_np(l: int, x: np.ndarray) -> np.ndarray:
    from scipy.special import spherical_jn

    return spherical_jn(l, x)


def bessel_zeros(n_orders: int, n_roots: int) -> np.ndarray:
    """First `n_roots` positive zeros z_ln of the spherical Bessel functions j_l, l < n_orders (float64).

    Zeros of j_l interlace those of j_{l−1}, so each lies between consecutive zeros of the order below."""
    from scipy.optimize import brentq

    zeros = np.zeros((n_orders, n_roots))
    points = np.arange(1, n_roots + n_orders) * np.pi  # zeros of j_0
    zeros[0] = points[:n_roots]
    for l in range(1, n_orders):
        roots = np.array([brentq(lambda r: _spherical_jn_np(l, r), points[m], points[m + 1], xtol=1e-15,
                                 rtol=4 * np.finfo(float).eps)
                          for m in range(len(points) - 1)])
        zeros[l] = roots[:n_roots]
        points = roots
    return zeros


def bessel_normalizers(zeros: np.ndarray) -> np.ndarray:
    """√2 / |j_{l+1}(z_ln)|: normalizes j_l(z_ln·x) on [0, 1] with weight x² (DimeNet's basis)."""
    out = np.zeros_like(zeros)
    for l in range(zeros.shape[0]):
        out[l] = 1.0 / np.sqrt(0.5 * _spherical_jn_np(l + 1, zeros[l]) ** 2)
    return out


def spherical_jn(z: torch.Tensor) -> torch.Tensor:
    """j_l(z[..., l, :]) for every row l of z [..., L, K] (the basis needs j_l only at its own arguments
    z_ln·x), by upward recurrence from j_0 and j_1 (numerically the closed forms sympy writes out; fine in
    float64 for z ≳ 1).  Order m + 1 is recurred only on the rows that still need it (rows ≥ m + 1): L(L + 1)/2
    row-steps, not the L² of every order at every argument followed by the diagonal (the float64 basis
    kernels were 15 % of a compiled DimeNet++ training step on Mo, profiled; docs/speed.md)."""
    n_orders = z.shape[-2]
    s, c = torch.sin(z), torch.cos(z)
    j_prev = s / z  # j_0 on every row
    rows = [j_prev[..., 0, :]]
    if n_orders > 1:
        j_cur = s / (z * z) - c / z  # j_1 on every row
        j_prev, j_cur, z = j_prev[..., 1:, :], j_cur[..., 1:, :], z[..., 1:, :]  # rows ≥ 1 from here
        rows.append(j_cur[..., 0, :])
        for m in range(1, n_orders - 1):  # j_{m+1} on rows ≥ m + 1
            j_prev, j_cur, z = j_prev[..., 1:, :], j_cur[..., 1:, :], z[..., 1:, :]
            j_prev, j_cur = j_cur, (2 * m + 1) / z * j_cur - j_prev
            rows.append(j_cur[..., 0, :])
    return torch.stack(rows, dim=-2)


class Envelope(nn.Module):
    """u(x) = 1/x + a x^(p−1) + b x^p + c x^(p+1) for x < 1, else 0 (p = exponent + 1): u, u', u'' → 0
    at x = 1, so everything it multiplies switches off C²-smoothly at the cutoff."""

    def __init__(self, exponent: int):
        super().__init__()
        self.p = exponent + 1
        self.a = -(self.p + 1) * (self.p + 2) / 2
        self.b = self.p * (self.p + 2)
        self.c = -self.p * (self.p + 1) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, a, b, c = self.p, self.a, self.b, self.c
        x0 = x.pow(p - 1)
        x1 = x0 * x
        x2 = x1 * x
        return (1.0 / x + a * x0 + b * x1 + c * x2) * (x < 1.0).to(x.dtype)


class BesselBasis(nn.Module):
    """u(d/c)·sin(f_n d/c) with trainable frequencies f_n (initialized nπ), as in DimeNet."""

    def __init__(self, radial: int, cutoff: float, envelope_exponent: int):
        super().__init__()
        self.cutoff = cutoff
        self.envelope = Envelope(envelope_exponent)
        self.freq = nn.Parameter(torch.arange(1, radial + 1, dtype=torch.float32) * math.pi)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        x = d.unsqueeze(-1) / self.cutoff
        return self.envelope(x) * torch.sin(self.freq * x)


class SphericalBasis(nn.Module):
    """Radial part u(d/c)·N_ln·j_l(z_ln d/c) [.., spherical, radial] of the 2-D basis, and the angular
    part Y_l^0(θ) (`legendre_cbf`, per triplet); their product on the triplets is DimeNet's a_SBF.

    z_ln and N_ln are float64 constants (not parameters or buffers: `.float()` must not round them)."""

    def __init__(self, spherical: int, radial: int, cutoff: float, envelope_exponent: int):
        super().__init__()
        self.spherical, self.radial, self.cutoff = spherical, radial, cutoff
        self.envelope = Envelope(envelope_exponent)
        zeros = bessel_zeros(spherical, radial)
        self.set_constants(zeros, bessel_normalizers(zeros))

    def set_constants(self, zeros: np.ndarray, norms: np.ndarray) -> None:
        self._consts = {"cpu": (torch.as_tensor(np.asarray(zeros, dtype=np.float64)),
                                torch.as_tensor(np.asarray(norms, dtype=np.float64)))}

    def constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = str(device)
        if key not in self._consts:
            self._consts[key] = tuple(t.to(device) for t in self._consts["cpu"])
        return self._consts[key]

    def radial_part(self, d: torch.Tensor) -> torch.Tensor:
        """d [...] → [..., spherical * radial] (l-major), in d's dtype, computed in float64."""
        zeros, norms = self.constants(d.device)
        x = d.to(torch.float64) / self.cutoff
        z = x[..., None, None] * zeros  # [..., L, K]
        jl = spherical_jn(z) * norms  # [..., L, K]: j_l(z_ln·x)
        rbf = self.envelope(x)[..., None, None] * jl
        return rbf.flatten(-2).to(d.dtype)


# ----------------------------------------------------------------------------- blocks

def glorot_orthogonal_(weight: torch.Tensor, scale: float = 2.0) -> None:
    """DimeNet's initializer (= torch_geometric.nn.inits.glorot_orthogonal)."""
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        weight.mul_((scale / ((weight.size(-2) + weight.size(-1)) * weight.var())).sqrt())


class EmbeddingBlock(nn.Module):
    """m_ji = act(W [h_i ‖ h_j ‖ act(W_rbf e_RBF(d_ji))] + b)."""

    def __init__(self, radial: int, hidden: int, activation: str, max_z: int):
        super().__init__()
        self.emb = nn.Embedding(max_z, hidden)
        self.lin_rbf = nn.Linear(radial, hidden)
        self.lin = nn.Linear(3 * hidden, hidden)
        self.act_rbf = get_activation(activation)
        self.act = get_activation(activation)
        with torch.no_grad():
            self.emb.weight.uniform_(-math.sqrt(3), math.sqrt(3))

    def forward(self, numbers, rbf, source, target):
        """numbers [A]; rbf [P, R] of the pairs; source j / target i [2P] of the paired edges → m_ji [2P, H].

        `lin` of the concatenation is split by blocks: the h_i and h_j parts are applied once per atom
        and gathered, the rbf part once per pair and broadcast over both directions."""
        h = self.emb(numbers)  # [A, H]
        hid = h.shape[-1]
        w = self.lin.weight
        h_i = F.linear(h, w[:, :hid], self.lin.bias)
        h_j = F.linear(h, w[:, hid:2 * hid])
        r = F.linear(self.act_rbf(self.lin_rbf(rbf)), w[:, 2 * hid:])  # [P, H]
        p = r.shape[0]
        atoms = h_i.index_select(0, target) + h_j.index_select(0, source)  # [2P, H]
        return self.act((atoms.view(2, p, hid) + r).view(2 * p, hid))


class ResidualLayer(nn.Module):
    def __init__(self, hidden: int, activation: str):
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.act1, self.act2 = get_activation(activation), get_activation(activation)
        for lin in (self.lin1, self.lin2):
            glorot_orthogonal_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x):
        return x + self.act2(self.lin2(self.act1(self.lin1(x))))


class InteractionPPBlock(nn.Module):
    """DimeNet++ interaction: directional message passing over the triplets with down/up projections."""

    def __init__(self, hidden, int_emb, basis_emb, spherical, radial, before_skip, after_skip, activation):
        super().__init__()
        self.lin_rbf1 = nn.Linear(radial, basis_emb, bias=False)
        self.lin_rbf2 = nn.Linear(basis_emb, hidden, bias=False)
        self.lin_sbf1 = nn.Linear(spherical * radial, basis_emb, bias=False)
        self.lin_sbf2 = nn.Linear(basis_emb, int_emb, bias=False)
        self.lin_kj = nn.Linear(hidden, hidden)
        self.lin_ji = nn.Linear(hidden, hidden)
        self.lin_down = nn.Linear(hidden, int_emb, bias=False)
        self.lin_up = nn.Linear(int_emb, hidden, bias=False)
        self.layers_before_skip = nn.ModuleList(ResidualLayer(hidden, activation) for _ in range(before_skip))
        self.lin = nn.Linear(hidden, hidden)
        self.layers_after_skip = nn.ModuleList(ResidualLayer(hidden, activation) for _ in range(after_skip))
        self.act_ji, self.act_kj, self.act_down, self.act_up, self.act_skip = (
            get_activation(activation) for _ in range(5))
        for lin in (self.lin_rbf1, self.lin_rbf2, self.lin_sbf1, self.lin_sbf2, self.lin_kj, self.lin_ji,
                    self.lin_down, self.lin_up, self.lin):
            glorot_orthogonal_(lin.weight)
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)

    def forward(self, x, rbf, rad, angles):
        """x [2P, H] edge messages (paired edges); rbf [P, R] and rad [P, L·R] (the spherical basis' radial
        part, l-major) of the pairs; `angles` (`EdgeAngles`) the harmonics and atoms of the edges.

        PyG's Σ_k x_kj ⊙ W₂W₁ sbf(d_kj, θ_kji) over the triplets, with W = W₂W₁ = [I, L, R]: the part of
        the edge kj, Σ_r W[:, l, r]·rad[kj, l, r]·Y_lm(u_kj)·x_kj, summed per atom and read by the edges ji
        (`EdgeAngles.sum`)."""
        e, hid = x.shape
        x_ji = self.act_ji(self.lin_ji(x))
        x_kj = self.act_kj(self.lin_kj(x)).view(2, e // 2, hid) * self.lin_rbf2(self.lin_rbf1(rbf))
        x_kj = self.act_down(self.lin_down(x_kj.view(e, hid)))  # [2P, I]
        w = self.lin_sbf2.weight @ self.lin_sbf1.weight  # [I, L·R]: the two bias-free projections as one
        agg = angles.sum(x_kj, rad, w)  # [2P, I]: Σ_k over the triplets of each edge ji
        h = x_ji + self.act_up(self.lin_up(agg))
        for layer in self.layers_before_skip:
            h = layer(h)
        h = self.act_skip(self.lin(h)) + x
        for layer in self.layers_after_skip:
            h = layer(h)
        return h


class OutputPPBlock(nn.Module):
    """Atom-wise output: Σ_j W_rbf e_RBF(d_ji) ⊙ m_ji → up-projection → (Linear, act) × layers → Linear."""

    def __init__(self, radial, hidden, out_emb, layers, activation, output_init="zeros"):
        super().__init__()
        self.lin_rbf = nn.Linear(radial, hidden, bias=False)
        self.lin_up = nn.Linear(hidden, out_emb, bias=False)
        self.lins = nn.ModuleList(nn.Linear(out_emb, out_emb) for _ in range(layers))
        self.acts = nn.ModuleList(get_activation(activation) for _ in range(layers))
        self.lin = nn.Linear(out_emb, 1, bias=False)
        glorot_orthogonal_(self.lin_rbf.weight)
        glorot_orthogonal_(self.lin_up.weight)
        for lin in self.lins:
            glorot_orthogonal_(lin.weight)
            nn.init.zeros_(lin.bias)
        if output_init == "zeros":
            nn.init.zeros_(self.lin.weight)
        else:
            glorot_orthogonal_(self.lin.weight)

    def forward(self, x, rbf, target, n_atoms_total):
        """x [2P, H] edge messages; rbf [P, R] of the pairs; target i [2P] → per-atom outputs [A, 1]."""
        e, hid = x.shape
        m = (x.view(2, e // 2, hid) * self.lin_rbf(rbf)).view(e, hid)
        a = x.new_zeros(n_atoms_total, hid).index_add(0, target, m)  # Σ_j over the edges into atom i
        a = self.lin_up(a)
        for lin, act in zip(self.lins, self.acts):
            a = act(lin(a))
        return self.lin(a)


# ----------------------------------------------------------------------------- model

class TripletAngles:
    """A sum over DimeNet's triplets k → j → i triplet by triplet (PyG's way): the triplet table
    (graph.extras "dimenet_kj", "dimenet_ji") and the spherical basis of every triplet [T, L·R]."""

    def __init__(self, unit: torch.Tensor, idx_kj: torch.Tensor, idx_ji: torch.Tensor, rad: torch.Tensor,
                 n_orders: int):
        p = unit.shape[0]
        unit = torch.cat([unit, -unit])  # [2P, 3]: edge m + P is the reverse of edge m
        cos = (unit.index_select(0, idx_kj) * unit.index_select(0, idx_ji)).sum(-1)  # [T]
        kj_pair = torch.where(idx_kj < p, idx_kj, idx_kj - p)  # the pair of each triplet's edge k → j
        cbf = legendre_cbf(n_orders, cos)  # [T, L]
        self.sbf = (rad.index_select(0, kj_pair).view(-1, n_orders, rad.shape[-1] // n_orders)
                    * cbf.unsqueeze(-1)).flatten(-2)  # [T, L·R]
        self.idx_kj, self.idx_ji = idx_kj, idx_ji

    def sum(self, x_kj: torch.Tensor, rad: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """As `DensityAngles.sum`, triplet by triplet."""
        t = x_kj.index_select(0, self.idx_kj) * (self.sbf @ w.T)  # [T, I]
        return torch.zeros_like(x_kj).index_add(0, self.idx_ji, t)


class DensityAngles:
    """A sum over DimeNet's triplets k → j → i by the addition theorem (`dcnn.models.angular`), on the
    padded layout of the edges into each atom (`neighbour_table`: [A, K], K = the largest in-degree).

    With the interaction's projection W = W₂W₁ [I, L, R] and m_kj [I] the message of edge kj:

        Σ_k m_kj ⊙ Σ_{l,r} W[:, l, r]·rad[kj, l, r]·Y_l0(cos θ_kji)
          = Σ_{l,m} √(4π/(2l+1))·Y_lm(u_ji) · Σ_r W[:, l, r] · C[j, :, lm, r],
        C[j, :, lm, r] = Σ_{kj into j} m_kj · Y_lm(u_kj)·rad[kj, l, r]

    minus the back-track (k = i: cos θ = −1).  The basis B[kj, lm·r] = Y_lm(u_kj)·rad[kj, l, r] is the
    same in every block (made once per forward, padded, zero at the padding), so a block is two batched
    matmuls over the atoms — C = mᵀB per atom [I × K]·[K × L²R], then the edges out of j read Σ_r W·C —
    and nothing of size [E, I, L²] is ever materialised (neither forward nor in either backward)."""

    def __init__(self, unit: torch.Tensor, rad: torch.Tensor, table: torch.Tensor, slot: torch.Tensor,
                 n_orders: int):
        p = unit.shape[0]
        self.n_orders, self.ls = n_orders, order_of_harmonics(n_orders, unit.device)
        odd = (self.ls % 2 == 1)
        self.edge, valid = padded_edges(table, 2 * p)
        pair = torch.where(self.edge < p, self.edge, self.edge - p)  # edge m + P is the reverse of edge m
        y = gather_padded(real_spherical_harmonics(n_orders, unit), pair)  # [A, K, L²] of each pair
        reverse = (self.edge >= p).unsqueeze(-1)
        y_in = y * (1 - 2 * (reverse & odd).to(y.dtype)) * valid.unsqueeze(-1)  # Y(−u) = (−1)^l Y(u)
        r = gather_padded(rad.view(p, n_orders, -1), pair).index_select(2, self.ls)  # [A, K, L², R]
        self.basis = (y_in.unsqueeze(-1) * r).flatten(2)  # [A, K, L²·R]
        # the edge j → i reads the density of j at the slot of its reverse i → j (row j): Y(u_ji) = (−1)^l Y(u_ij)
        self.read = y_in * (1 - 2 * odd.to(y.dtype)) * density_weight(n_orders, y)  # [A, K, L²]
        self.read_slot = torch.cat([slot[p:], slot[:p]])  # [2P]: each edge reads at its reverse's slot
        # Y_l0(−1): the back-track k = i (cos θ = −1: u_kj = −u_ji exactly, as built)
        self.back_track = unit.new_tensor([math.sqrt((2 * l + 1) / (4 * math.pi)) * (-1) ** l
                                           for l in range(n_orders)])

    def sum(self, x_kj: torch.Tensor, rad: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Σ_{k ≠ i} x_kj ⊙ Σ_{l,r} W[:, l, r]·rad[kj, l, r]·Y_l0(cos θ_kji) for every edge ji → [2P, I].
        x_kj [2P, I]; rad [P, L·R] of the pairs (l-major); w [I, L·R]."""
        p, i = rad.shape[0], w.shape[0]
        a, k, n_h = self.read.shape
        w = w.view(i, self.n_orders, -1)  # [I, L, R]
        c = torch.bmm(gather_padded(x_kj, self.edge).transpose(1, 2), self.basis)  # [A, I, L²·R]
        density = (c.view(a, i, n_h, -1) * w.index_select(1, self.ls)).sum(-1)  # [A, I, L²]
        total = torch.bmm(self.read, density.transpose(1, 2)).reshape(a * k, i).index_select(0, self.read_slot)
        # minus the back-track: for edge ji the edge kj is its reverse, of the same pair
        q = torch.einsum("plr,ilr,l->pi", rad.view(p, self.n_orders, -1), w, self.back_track)  # [P, I]
        return total - torch.cat([x_kj[p:], x_kj[:p]]) * q.repeat(2, 1)


def pair_vectors(graph: AtomicGraph) -> torch.Tensor:
    """r_ij = x_j − x_i + S·cell [P, 3] of the graph's pairs (the first half of its paired edges; each
    reverse has exactly −r_ij); differentiable w.r.t. positions and cells."""
    p = graph.n_pairs
    source, target = graph.edge_index[0, :p], graph.edge_index[1, :p]
    shift = torch.einsum("ek,ekl->el", graph.cell_shifts[:p], graph.cells[graph.batch[target]])
    return graph.positions.index_select(0, source) - graph.positions.index_select(0, target) + shift


class DimeNetPP(nn.Module):
    """Energy model E(graph): DimeNet++ with SiLU (swish) activations."""

    paper_activation_scope = ("output_blocks",)  # the paper swaps activations in the output blocks only
    task_args = ("max_z",)  # the element-embedding size (dcnn.models.MAX_Z): not a size a study varies

    def __init__(self, hidden=32, blocks=2, int_emb=16, basis_emb=8, out_emb=32, spherical=5, radial=4,
                 cutoff=6.0, envelope_exponent=5, before_skip=1, after_skip=2, output_layers=3,
                 activation="silu", max_z=100, output_init="zeros"):
        super().__init__()
        if spherical < 2:
            raise ValueError("spherical must be at least 2")
        self.cutoff = cutoff
        self.rbf = BesselBasis(radial, cutoff, envelope_exponent)
        self.sbf = SphericalBasis(spherical, radial, cutoff, envelope_exponent)
        self.emb = EmbeddingBlock(radial, hidden, activation, max_z)
        self.output_blocks = nn.ModuleList(
            OutputPPBlock(radial, hidden, out_emb, output_layers, activation, output_init)
            for _ in range(blocks + 1))
        self.interaction_blocks = nn.ModuleList(
            InteractionPPBlock(hidden, int_emb, basis_emb, spherical, radial, before_skip, after_skip,
                               activation) for _ in range(blocks))

    def prepare_graph(self, graph: AtomicGraph) -> AtomicGraph:
        """The graph with DimeNet++'s triplet table in `extras` ("dimenet_kj", "dimenet_ji": every edge k → j
        paired with every edge j → i, the exact back-track excluded, images of i kept) where summing triplet
        by triplet is the cheaper way (`dcnn.models.angular.sum_by_density`: few neighbours per atom), else
        the padded table of the edges into each atom that the density sum runs on
        (`dcnn.models.angular.neighbour_table`).  Called by `dcnn.models.prepare` outside the
        differentiable step; unchanged if a table is there."""
        n_atoms = graph.positions.shape[0]
        if "dimenet_kj" in graph.extras or DENSITY_TABLE in graph.extras:
            return graph
        if sum_by_density("dimenetpp", graph.edge_index, n_atoms, self.sbf.spherical):
            table, slot = neighbour_table(graph.edge_index[1], n_atoms)
            return dataclasses.replace(graph, extras={**graph.extras, DENSITY_TABLE: table, DENSITY_SLOT: slot})
        idx_kj, idx_ji = triplets(graph.edge_index, n_atoms, graph.cell_shifts)
        return dataclasses.replace(graph, extras={**graph.extras, "dimenet_kj": idx_kj, "dimenet_ji": idx_ji})

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """graph (positions Å) → energies [B]: the output blocks' per-atom terms summed per structure."""
        source, target = graph.edge_index
        vec = pair_vectors(graph)  # [P, 3]
        d = vec.norm(dim=-1)  # [P]
        unit = vec / d.unsqueeze(-1)
        n_atoms = graph.positions.shape[0]
        # triplet k → j → i: the angle between r_ji = x_j − x_i and r_kj = x_k − x_j, images included (PyG's
        # DimeNet++ convention: the supplement of the angle at j); edge m + P is the reverse of edge m
        rbf = self.rbf(d)  # [P, R]
        rad = self.sbf.radial_part(d)  # [P, L·R]
        if "dimenet_kj" in graph.extras:
            angles = TripletAngles(unit, graph.extras["dimenet_kj"], graph.extras["dimenet_ji"], rad,
                                   self.sbf.spherical)
        else:
            angles = DensityAngles(unit, rad, *density_tables(graph.extras, target, n_atoms), self.sbf.spherical)

        x = self.emb(graph.numbers, rbf, source, target)  # [2P, H]
        per_atom = self.output_blocks[0](x, rbf, target, n_atoms)
        for inter, out in zip(self.interaction_blocks, self.output_blocks[1:]):
            x = inter(x, rbf, rad, angles)
            per_atom = per_atom + out(x, rbf, target, n_atoms)
        return sum_per_structure(per_atom.squeeze(-1), graph)

    @torch.no_grad()
    def load_pyg_(self, pyg: nn.Module) -> "DimeNetPP":
        """Copy the weights of a `torch_geometric.nn.models.DimeNetPlusPlus` with the same sizes and
        install its float32-rounded Bessel zeros/normalizers (for checks)."""
        from torch_geometric.nn.models.dimenet_utils import Jn, Jn_zeros

        zeros = Jn_zeros(self.sbf.spherical, self.sbf.radial)  # float32, as PyG's sympy forms use them
        norms = np.array([[1 / (0.5 * Jn(zeros[l, i], l + 1) ** 2) ** 0.5 for i in range(zeros.shape[1])]
                          for l in range(zeros.shape[0])], dtype=np.float64)
        self.sbf.set_constants(zeros.astype(np.float64), norms)
        self.rbf.freq.copy_(pyg.rbf.freq)
        n_emb = pyg.emb.emb.weight.shape[0]
        self.emb.emb.weight[:n_emb].copy_(pyg.emb.emb.weight)
        for name in ("lin_rbf", "lin"):
            getattr(self.emb, name).load_state_dict(getattr(pyg.emb, name).state_dict())
        for ours, theirs in zip(self.interaction_blocks, pyg.interaction_blocks, strict=True):
            ours.load_state_dict(theirs.state_dict())
        for ours, theirs in zip(self.output_blocks, pyg.output_blocks, strict=True):
            ours.load_state_dict(theirs.state_dict())
        return self
