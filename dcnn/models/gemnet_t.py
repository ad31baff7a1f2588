"""GemNet-T (Gasteiger et al. 2021), energy-conserving, on the graph layout (dcnn.atomistic.graph.AtomicGraph),
in plain torch.

Follows fairchem's `fairchem/core/models/gemnet/` (gemnet.py, layers/*: the triplet-only interaction
block, the efficient bilinear layer, the Gaussian/spherical-Bessel radial bases with the polynomial
envelope, the Y_l0 circular basis, He-orthogonal init, ScaledSiLU) layer for layer, with the same module
names and parameter shapes (so a fairchem state_dict loads, see tests/fairchem_gemnet.py), and as the
paper's code configured it (lbai-lab/dcnn-training `models/Chemistry/gemnet/gemnet.py`: fairchem's OC20
"gemnet-dT" sizes with `direct_forces=False`, i.e. forces by autograd; that is GemNet-T in the GemNet
paper's naming, "d" meaning direct forces).  What differs, and why:

* **Graph** = the AtomicGraph's edges c → a (source c = edge_index[0], target a = edge_index[1]; periodic
  images are edges with their cell shifts) and, for each edge c → a, every *other edge* b → a into the
  same atom (fairchem's `get_triplets`: edges compared, not atoms, so two images of one atom are two
  b's, and b may be another image of c).  `prepare_graph` builds that table once per batch, outside the
  differentiable step (graph.extras["gemnet_id3_ba"]), already in the padded form of fairchem's efficient
  bilinear layer: `id3_ba` [E, K_max] (row = fairchem's id3_ca, column = its id3_ragged_idx, entry = its
  id3_ba; K_max = the largest in-degree − 1), short rows padded with E, which points at a zero row
  appended to the gathered tensors, so the padding contributes exactly 0 (fairchem's zero-filled
  sph2/m2).  The model then uses index_select/index_add only: gathers over the table, sums over the edges
  into an atom by index_add over the targets, fairchem's swap (c → a ↔ a → c) is the graph's pairing
  (edge m and m + P are reverses: the two halves exchanged).  On the complete graph of an N-atom molecule
  every row has N − 2 entries, no padding: the tensors of the dense layout.  Periodic frames are radius
  graphs at the cutoff, so E is fairchem's periodic GemNet-T (its `use_pbc` path, no neighbour cap).  Dense
  cells (≥ 0.8·L² triplets per edge, `dcnn.models.angular.sum_by_density`) get no triplet table: the sum over b
  runs by the addition theorem through per-atom densities (`DensityAngles`), the same function at O(E·L²).
* **Cutoff**: fixed-size molecules train on the complete graph (every ordered pair), and fairchem's
  radius graph (6 Å, 50 neighbours: no cap for MD17-sized molecules) is reproduced exactly: every path
  from an edge's embedding to the energy is multiplied by a radial basis of that edge, which the envelope
  zeroes beyond the cutoff, except the triplet path (the down projection's activation of a zero vector is
  act(0)), so the triplet messages of edges beyond the cutoff (d ≥ cutoff) are masked out.  On a radius
  graph at the cutoff (periodic data) the mask is all ones.  With the original ScaledSiLU (act(0) = 0)
  the mask changes nothing and E is C² in the positions as an atom crosses the cutoff (envelope exponent
  5); with scope="all" and an activation with act(0) ≠ 0 (isilu, igelu, softplus) E jumps there, exactly
  as on fairchem's radius graph.
* **Forces** = −∂E/∂x by autograd (`dcnn.models.energy_and_forces`) through the edge vectors (images
  included: x_a − x_c − S·cell, fairchem's V_st direction), their distances *and* the triplet angles (cos φ
  from unit vectors of the non-detached positions; clamped to [−1, 1] as fairchem's
  `inner_product_normalized`).
* **Scale factors**: fairchem multiplies five places per block by constants fitted on data (the paper's
  code loaded OC20's `gemnet-dT.json`, e.g. 18.9 for TripInteraction_1_had_rbf); unfitted, fairchem uses 1,
  which is what a built model holds.  Unfitted, GemNet is not at the scale it was designed for (initial
  rescaled forces ≈ 1.3 against labels ≈ 1e-3 on ethanol), so training fits them on the training data
  before the first step, as fairchem's `fit_scaling_factors` does (`data_init_`, called by the task for
  every `init`; each factor in computation order makes its output's variance that of its reference
  input, or 1, over 16 batches), after the activations are swapped: the factors match the network that
  is trained.  The statistics run over fairchem's rows: the atoms, the edges inside the cutoff (all of a
  radius graph's; on a complete graph the far ones are left out) and the triplets of two such edges.
  `ScaleFactor` modules hold them as buffers, so they are in every checkpoint.
* **Activations**: `Dense` keeps its activation as a separate `Activation` module ("scaled_silu" =
  SiLU/0.6, fairchem's ScaledSiLU) so `replace_activations` can swap it; a Dense without activation holds
  none.  The paper's placement swaps the output blocks' activations only (its IAF_replace: every
  `out_blocks[k].layers[*]` activation, 1 + 2·num_atom per block).
* Atom embeddings: `nn.Embedding(max_z − 1, emb_atom)` indexed by Z − 1 (fairchem: 83 elements).
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn
from torch.nn import functional as F

from dcnn.activations import get_activation
from dcnn.atomistic.graph import AtomicGraph
from dcnn.models.common import GaussianSmearing, scatter_sum, sum_per_structure
from dcnn.models.angular import (DENSITY_SLOT, DENSITY_TABLE, density_tables, density_weight, gather_padded,
                                 legendre_cbf, neighbour_table, order_of_harmonics, padded_edges,
                                 real_spherical_harmonics, sum_by_density)

# paper: the paper's code (lbai-lab/dcnn-training GemNetT defaults = fairchem configs/oc20/s2ef/all/gemnet/
# gemnet-dT.yml model sizes; num_before_skip 1, num_after_skip 2, num_concat 1, num_atom 3, gaussian rbf,
# polynomial envelope exponent 5, direct_forces False).  small: trains in seconds per epoch on CPU.
GEMNET_T_PRESETS = {
    "small": dict(blocks=2, emb_atom=32, emb_edge=32, emb_trip=16, emb_rbf=8, emb_cbf=8, emb_bil_trip=16,
                  spherical=5, radial=16, cutoff=6.0),
    "paper": dict(blocks=3, emb_atom=512, emb_edge=512, emb_trip=64, emb_rbf=16, emb_cbf=16, emb_bil_trip=64,
                  spherical=7, radial=128, cutoff=6.0),
}

INV_SQRT_2 = 1 / math.sqrt(2.0)


# ----------------------------------------------------------------------------- init, dense layers

def he_orthogonal_(weight: torch.Tensor) -> torch.Tensor:
    """GemNet's initializer: a random (semi-)orthogonal matrix, standardized (mean 0, unbiased var 1 per
    output unit; over the first two dims of a 3-D kernel), times 1/√fan_in."""
    with torch.no_grad():
        nn.init.orthogonal_(weight)
        fan_in = weight.shape[:-1].numel() if weight.dim() == 3 else weight.shape[1]
        dims = [0, 1] if weight.dim() == 3 else 1
        var, mean = torch.var_mean(weight, dim=dims, unbiased=True, keepdim=True)
        weight.copy_((weight - mean) / (var + 1e-6) ** 0.5 * fan_in ** -0.5)
    return weight


class Dense(nn.Module):
    """Linear (no bias by default, He-orthogonal init), then an optional activation module."""

    def __init__(self, fin: int, fout: int, activation: str | None = None, bias: bool = False):
        super().__init__()
        self.linear = nn.Linear(fin, fout, bias=bias)
        he_orthogonal_(self.linear.weight)
        if bias:
            nn.init.zeros_(self.linear.bias)
        self.act = get_activation(activation) if activation else None

    def forward(self, x):
        x = self.linear(x)
        return x if self.act is None else self.act(x)


class ResidualLayer(nn.Module):
    """(x + Dense(Dense(x))) / √2."""

    def __init__(self, units: int, activation: str, layers: int = 2):
        super().__init__()
        self.dense_mlp = nn.Sequential(*(Dense(units, units, activation) for _ in range(layers)))

    def forward(self, x):
        return (x + self.dense_mlp(x)) * INV_SQRT_2


def _rows_variance(x: torch.Tensor, rows: torch.Tensor | None) -> tuple[float, int]:
    """fairchem's statistic: the mean over features of the (unbiased) variance over samples, here over the
    rows `rows` marks (edges inside the cutoff: the edges of fairchem's radius graph; triplets of two such
    edges, the table's padding left out), and the row count."""
    flat = x.reshape(-1, x.shape[-1])
    if rows is not None:
        flat = flat[rows.expand(*x.shape[:-1], 1).reshape(-1) > 0]
    return float(flat.to(torch.float64).var(dim=0).mean()), int(flat.shape[0])


class ScaleFactor(nn.Module):
    """x · s with s fitted on data (`GemNetT.data_init_`, as fairchem's `ScaleFactor`): 1 until fitted.

    `ref` (and the row masks) are only read while fitting: s makes Var(x·s) = Var(ref), or 1 without ref."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale_factor", torch.tensor(1.0))
        self.stats: list | None = None  # while fitting: [Σ n·Var(out), Σ n·Var(ref), Σ n]

    def forward(self, x, ref=None, rows=None, ref_rows=None):
        x = x * self.scale_factor
        if self.stats is not None:
            var_out, n = _rows_variance(x.detach(), rows)
            var_in = 1.0 if ref is None else _rows_variance(ref.detach(), ref_rows)[0]
            self.stats[0] += var_out * n
            self.stats[1] += var_in * n
            self.stats[2] += n
        return x


# ----------------------------------------------------------------------------- bases

class PolynomialEnvelope(nn.Module):
    """u(x) = 1 + a x^p + b x^(p+1) + c x^(p+2) for x < 1, else 0: u, u', u'' vanish at x = 1."""

    def __init__(self, exponent: int):
        super().__init__()
        self.p = float(exponent)
        self.a = -(self.p + 1) * (self.p + 2) / 2
        self.b = self.p * (self.p + 2)
        self.c = -self.p * (self.p + 1) / 2

    def forward(self, x):
        env = 1 + self.a * x ** self.p + self.b * x ** (self.p + 1) + self.c * x ** (self.p + 2)
        return torch.where(x < 1, env, torch.zeros_like(x))


class SphericalBesselBasis(nn.Module):
    """√(2/c³) sin(f_n x)/x with trainable frequencies f_n (initialized nπ): the GemNet paper's basis."""

    def __init__(self, radial: int, cutoff: float):
        super().__init__()
        self.norm_const = math.sqrt(2 / cutoff ** 3)
        self.frequencies = nn.Parameter(torch.arange(1, radial + 1, dtype=torch.float32) * math.pi)

    def forward(self, x):
        return self.norm_const / x[..., None] * torch.sin(self.frequencies * x[..., None])


class RadialBasis(nn.Module):
    """envelope(d/c) · basis(d/c): Gaussians on [0, 1] (fairchem's default, the paper's) or spherical Bessel."""

    def __init__(self, radial: int, cutoff: float, rbf: str = "gaussian", envelope_exponent: int = 5):
        super().__init__()
        self.inv_cutoff = 1 / cutoff
        self.envelope = PolynomialEnvelope(envelope_exponent)
        if rbf == "gaussian":
            self.rbf = GaussianSmearing(0.0, 1.0, radial)
        elif rbf == "spherical_bessel":
            self.rbf = SphericalBesselBasis(radial, cutoff)
        else:
            raise ValueError(f"unknown radial basis {rbf!r}; known: gaussian, spherical_bessel")

    def forward(self, d):
        x = d * self.inv_cutoff
        return self.envelope(x)[..., None] * self.rbf(x)


class CircularBasis(nn.Module):
    """The triplet basis in its efficient form: a radial basis of the output edge c → a (its own
    parameters) here, and Y_l0(cos φ_cab), l < spherical, of the angle at a (`TripletAngles`,
    `DensityAngles`)."""

    def __init__(self, spherical: int, radial: int, cutoff: float, rbf: str, envelope_exponent: int):
        super().__init__()
        self.spherical = spherical
        self.radial_basis = RadialBasis(radial, cutoff, rbf, envelope_exponent)

    def forward(self, d):
        return self.radial_basis(d)


# ----------------------------------------------------------------------------- graph tables

TRIPLETS_KEY = "gemnet_id3_ba"  # graph.extras entry: the padded triplet table


def triplet_table(target: torch.Tensor, n_atoms_total: int) -> torch.Tensor:
    """id3_ba [E, K_max]: row e lists every other edge b → a into the target a of edge e = c → a (edges
    compared, not atoms: fairchem's `get_triplets`), in edge order; K_max = max in-degree − 1; short rows
    padded with E (a zero row the model appends).  Vectorised: edges grouped by target (stable sort),
    row e = its group with e itself skipped."""
    n_edges = target.shape[0]
    into = torch.bincount(target, minlength=n_atoms_total)  # [A] in-degrees
    k_max = max(int(into.max()) - 1, 0) if n_edges else 0  # the one host read (a shape)
    if k_max == 0:
        return torch.full((n_edges, 0), n_edges, dtype=torch.long, device=target.device)
    order = torch.argsort(target, stable=True)  # edges grouped by the atom they point into
    start = (torch.cumsum(into, 0) - into)[target]  # [E] where edge e's group starts in `order`
    rank = torch.empty_like(order).scatter_(0, order, torch.arange(n_edges, device=target.device)) - start
    k = torch.arange(k_max, device=target.device)
    col = k + (k >= rank[:, None])  # the group's members, edge e itself skipped
    valid = k < (into[target] - 1)[:, None]
    ids = order[(start[:, None] + col).clamp(max=n_edges - 1)]
    return torch.where(valid, ids, torch.full_like(ids, n_edges))


def _padded(x: torch.Tensor) -> torch.Tensor:
    """x [E, ...] with a zero row appended (row E: where the triplet table's padding points)."""
    return torch.cat([x, x.new_zeros((1, *x.shape[1:]))])


def _gather_triplets(x: torch.Tensor, id3_ba: torch.Tensor) -> torch.Tensor:
    """[E, F] edge rows → [E, K_max, F]: row e, column k = x[id3_ba[e, k]] (0 for the padding)."""
    e, k = id3_ba.shape
    return _padded(x).index_select(0, id3_ba.reshape(-1)).view(e, k, x.shape[-1])


def _swap(x: torch.Tensor) -> torch.Tensor:
    """fairchem's x[id_swap]: each edge gets the row of its reverse; the graph's edges are paired (edge m
    and m + P reverses), so that is the two halves exchanged."""
    p = x.shape[0] // 2
    return torch.cat([x[p:], x[:p]])


# ----------------------------------------------------------------------------- blocks

class EdgeEmbedding(nn.Module):
    """m_ca = act(W [h_c ‖ h_a ‖ m]); W is split so the atom parts are computed per atom, then gathered."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int, activation: str):
        super().__init__()
        self.atom_features = atom_features
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation)

    def forward(self, h, m, src, tgt):
        """h [A, F_atom]; m [E, F]; src/tgt [E] (c and a of each edge c → a)."""
        a = self.atom_features
        w = self.dense.linear.weight
        hs = F.linear(h, w[:, :a])
        ht = F.linear(h, w[:, a:2 * a])
        x = hs.index_select(0, src) + ht.index_select(0, tgt) + F.linear(m, w[:, 2 * a:])
        return self.dense.act(x)


class AtomUpdateBlock(nn.Module):
    """h = MLP(scale · Σ_{edges into the atom} m ⊙ W rbf)."""

    def __init__(self, emb_atom, emb_edge, emb_rbf, n_hidden, activation):
        super().__init__()
        self.dense_rbf = Dense(emb_rbf, emb_edge)
        self.scale_sum = ScaleFactor()
        self.layers = nn.ModuleList([Dense(emb_edge, emb_atom, activation),
                                     *(ResidualLayer(emb_atom, activation) for _ in range(n_hidden))])

    def forward(self, m, rbf, tgt, n_atoms, inside=None):
        """m [E, F], rbf [E, R], tgt [E] → [A, F_atom]; `inside` [E, 1] only read while fitting."""
        x = self.scale_sum(scatter_sum(m * self.dense_rbf(rbf), tgt, n_atoms), ref=m, ref_rows=inside)
        for layer in self.layers:
            x = layer(x)
        return x


class OutputBlock(AtomUpdateBlock):
    """The atom update block and a final Dense(emb_atom → 1) (energy per atom; no direct-force head)."""

    def __init__(self, emb_atom, emb_edge, emb_rbf, n_hidden, activation, output_init="HeOrthogonal"):
        super().__init__(emb_atom, emb_edge, emb_rbf, n_hidden, activation)
        self.out_energy = Dense(emb_atom, 1)
        if output_init.lower() == "zeros":
            nn.init.zeros_(self.out_energy.linear.weight)
        elif output_init.lower() != "heorthogonal":
            raise ValueError(f"unknown output_init {output_init!r}; known: HeOrthogonal, zeros")

    def forward(self, m, rbf, tgt, n_atoms, inside=None):
        return self.out_energy(super().forward(m, rbf, tgt, n_atoms, inside))


class EfficientInteractionDownProjection(nn.Module):
    """The triplet basis' radial part projected down: rbf(d_ca) · W [S, R, I] → [E, I, S]."""

    def __init__(self, spherical, radial, emb_interm):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(spherical, radial, emb_interm))
        he_orthogonal_(self.weight)

    def forward(self, rbf):
        return torch.einsum("...r,sri->...is", rbf, self.weight)


class EfficientInteractionBilinear(nn.Module):
    """m_ca = Σ_{t,i} W[t, i, o] · r[ca, i, t], r = Σ_s rbf_W1[ca, i, s] · Σ_b Y_s(φ_cab) x_ba[t]: the bilinear
    layer after the sum over the triplets and its contraction with rbf_W1 (`TripletAngles.contract` /
    `DensityAngles.contract`), in the order of fairchem's efficient reformulation."""

    def __init__(self, emb_trip, emb_interm, units_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(emb_trip, emb_interm, units_out))
        he_orthogonal_(self.weight)

    def forward(self, r):
        """r [E, I, T] → [E, O]."""
        t, i, o = self.weight.shape
        return torch.matmul(r.transpose(-1, -2).flatten(-2), self.weight.reshape(t * i, o))  # [E, O]


class TripletAngles:
    """GemNet's sum over the triplets, triplet by triplet (fairchem's way): the padded table id3_ba [E, K]
    (graph.extras "gemnet_id3_ba") and Y_s(cos φ_cab) of every entry [E, K, S] (cos clamped to [−1, 1] as
    fairchem's `inner_product_normalized`; the padding's cos is 0 and its x_ba row is zero)."""

    def __init__(self, unit: torch.Tensor, id3_ba: torch.Tensor, n_orders: int, rbf_w1: torch.Tensor):
        self.id3_ba, self.rbf_w1 = id3_ba, rbf_w1
        cos = (unit.unsqueeze(1) * _gather_triplets(unit, id3_ba)).sum(-1)  # [E, K]
        self.sph = legendre_cbf(n_orders, cos.clamp(-1, 1))  # [E, K, S]

    def contract(self, x_ba: torch.Tensor) -> torch.Tensor:
        """x_ba [E, T] → [E, I, T]: Σ_s rbf_W1[ca, i, s] · Σ_b Y_s(φ_cab)·x_ba[b] over the other edges b → a
        of each edge c → a."""
        return torch.matmul(self.rbf_w1, torch.matmul(self.sph.transpose(-1, -2),
                                                      _gather_triplets(x_ba, self.id3_ba)))

    def table(self) -> torch.Tensor:
        return self.id3_ba


class DensityAngles:
    """GemNet's sum over the triplets by the addition theorem (`dcnn.models.angular`), on the padded layout
    of the edges into each atom (`neighbour_table`: [A, K]), contracted with rbf_W1 in the same step:

        Σ_s rbf_W1[ca, i, s] Σ_{b ≠ c} Y_s(φ_cab) x_ba = Σ_{lm} G[ca, i, lm] · D[a, lm, :] − x_ca·Σ_s rbf_W1[ca, i, s]·Y_s0(1)
        D[a, lm, :] = Σ_{ba into a} Y_lm(u_ba) x_ba,   G[ca, i, lm] = rbf_W1[ca, i, l]·√(4π/(2l+1))·Y_lm(u_ca)

    G is the same in every block (made once per forward, padded), so a block is two batched matmuls over
    the atoms ([L² × K]·[K × T], then [K·I × L²]·[L² × T]) and nothing of size [E, T, L²] is materialised.
    Same function as `TripletAngles` without a triplet table (tests/test_models_angular.py)."""

    def __init__(self, unit: torch.Tensor, target: torch.Tensor, table: torch.Tensor, slot: torch.Tensor,
                 n_orders: int, rbf_w1: torch.Tensor):
        self.target, self.target_slot = target, slot
        self.edge, valid = padded_edges(table, unit.shape[0])
        y = gather_padded(real_spherical_harmonics(n_orders, unit), self.edge) * valid.unsqueeze(-1)  # [A, K, L²]
        self.y = y  # [A, K, L²]: the harmonics of the edges into each atom, 0 at the padding
        w1 = gather_padded(rbf_w1, self.edge).index_select(3, order_of_harmonics(n_orders, unit.device))
        self.g = (w1 * (y * density_weight(n_orders, y)).unsqueeze(2)).flatten(1, 2)  # [A, K·I, L²]
        itself = unit.new_tensor([math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(n_orders)])  # Y_l0(1)
        self.w1_itself = (rbf_w1 @ itself).unsqueeze(-1)  # [E, I, 1]

    def contract(self, x_ba: torch.Tensor) -> torch.Tensor:
        """As `TripletAngles.contract`."""
        a, k, _ = self.y.shape
        density = torch.bmm(self.y.transpose(1, 2), gather_padded(x_ba, self.edge))  # [A, L², T]
        out = torch.bmm(self.g, density).view(a * k, -1, x_ba.shape[-1]).index_select(0, self.target_slot)
        return out - x_ba.unsqueeze(1) * self.w1_itself  # [E, I, T]

    def table(self) -> torch.Tensor:
        """The triplet table (for fitting the scale factors only, whose statistics run over the triplets)."""
        return triplet_table(self.target, self.y.shape[0])


class TripletInteraction(nn.Module):
    def __init__(self, emb_edge, emb_trip, emb_bilinear, emb_rbf, emb_cbf, activation):
        super().__init__()
        self.dense_ba = Dense(emb_edge, emb_edge, activation)
        self.mlp_rbf = Dense(emb_rbf, emb_edge)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = EfficientInteractionBilinear(emb_trip, emb_cbf, emb_bilinear)
        self.scale_cbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_edge, emb_trip, activation)
        self.up_projection_ca = Dense(emb_bilinear, emb_edge, activation)
        self.up_projection_ac = Dense(emb_bilinear, emb_edge, activation)

    def forward(self, m, rbf3, angles, inside):
        x_ba = self.dense_ba(m)
        x_ba = self.scale_rbf(x_ba * self.mlp_rbf(rbf3), ref=x_ba, rows=inside, ref_rows=inside)
        x_ba = self.down_projection(x_ba) * inside  # edges beyond the cutoff are not in fairchem's graph
        ref = triplets = None
        if self.scale_cbf_sum.stats is not None:  # fitting: the triplets of fairchem's graph (both edges inside)
            id3_ba = angles.table()
            ref = _gather_triplets(x_ba, id3_ba)  # [E, K, T]
            triplets = inside.unsqueeze(1) * _gather_triplets(inside, id3_ba)
        x = self.scale_cbf_sum(self.mlp_cbf(angles.contract(x_ba)), ref=ref, rows=inside, ref_rows=triplets)
        x_ca = self.up_projection_ca(x)
        x_ac = _swap(self.up_projection_ac(x))  # message of a → c added to c → a
        return (x_ca + x_ac) * INV_SQRT_2


class InteractionBlockTripletsOnly(nn.Module):
    """GemNet-T interaction: triplet message passing on the edges, atom update, edge update from atoms."""

    def __init__(self, emb_atom, emb_edge, emb_trip, emb_rbf, emb_cbf, emb_bil_trip, before_skip,
                 after_skip, concat, num_atom, activation):
        super().__init__()
        self.dense_ca = Dense(emb_edge, emb_edge, activation)
        self.trip_interaction = TripletInteraction(emb_edge, emb_trip, emb_bil_trip, emb_rbf, emb_cbf,
                                                   activation)
        self.layers_before_skip = nn.ModuleList(ResidualLayer(emb_edge, activation) for _ in range(before_skip))
        self.layers_after_skip = nn.ModuleList(ResidualLayer(emb_edge, activation) for _ in range(after_skip))
        self.atom_update = AtomUpdateBlock(emb_atom, emb_edge, emb_rbf, num_atom, activation)
        self.concat_layer = EdgeEmbedding(emb_atom, emb_edge, emb_edge, activation)
        self.residual_m = nn.ModuleList(ResidualLayer(emb_edge, activation) for _ in range(concat))

    def forward(self, h, m, rbf3, angles, inside, rbf_h, src, tgt):
        x = (self.dense_ca(m) + self.trip_interaction(m, rbf3, angles, inside)) * INV_SQRT_2
        for layer in self.layers_before_skip:
            x = layer(x)
        m = (m + x) * INV_SQRT_2
        for layer in self.layers_after_skip:
            m = layer(m)
        h = (h + self.atom_update(m, rbf_h, tgt, h.shape[0], inside)) * INV_SQRT_2
        m2 = self.concat_layer(h, m, src, tgt)
        for layer in self.residual_m:
            m2 = layer(m2)
        return h, (m + m2) * INV_SQRT_2


# ----------------------------------------------------------------------------- model

class GemNetT(nn.Module):
    """Energy model E(graph): GemNet-T with ScaledSiLU, forces by autograd."""

    paper_activation_scope = ("out_blocks",)  # the paper swaps the output blocks' activations only
    task_args = ("max_z",)  # the element-embedding size (dcnn.models.MAX_Z): not a size a study varies

    def __init__(self, blocks=2, emb_atom=32, emb_edge=32, emb_trip=16, emb_rbf=8, emb_cbf=8, emb_bil_trip=16,
                 spherical=5, radial=16, cutoff=6.0, before_skip=1, after_skip=2, concat=1, num_atom=3,
                 rbf="gaussian", envelope_exponent=5, output_init="HeOrthogonal", activation="scaled_silu",
                 max_z=100):
        super().__init__()
        if spherical < 1:
            raise ValueError("spherical must be at least 1")
        self.cutoff = cutoff
        self.radial_basis = RadialBasis(radial, cutoff, rbf, envelope_exponent)
        self.cbf_basis3 = CircularBasis(spherical, radial, cutoff, rbf, envelope_exponent)
        # down projections shared by all blocks
        self.mlp_rbf3 = Dense(radial, emb_rbf)
        self.mlp_cbf3 = EfficientInteractionDownProjection(spherical, radial, emb_cbf)
        self.mlp_rbf_h = Dense(radial, emb_rbf)
        self.mlp_rbf_out = Dense(radial, emb_rbf)
        self.atom_emb = nn.Embedding(max_z - 1, emb_atom)  # row Z − 1
        with torch.no_grad():
            self.atom_emb.weight.uniform_(-math.sqrt(3), math.sqrt(3))
        self.edge_emb = EdgeEmbedding(emb_atom, radial, emb_edge, activation)
        self.int_blocks = nn.ModuleList(
            InteractionBlockTripletsOnly(emb_atom, emb_edge, emb_trip, emb_rbf, emb_cbf, emb_bil_trip,
                                         before_skip, after_skip, concat, num_atom, activation)
            for _ in range(blocks))
        self.out_blocks = nn.ModuleList(
            OutputBlock(emb_atom, emb_edge, emb_rbf, num_atom, activation, output_init) for _ in range(blocks + 1))

    def prepare_graph(self, graph: AtomicGraph) -> AtomicGraph:
        """The graph with its triplet table (`triplet_table`, graph.extras["gemnet_id3_ba"]) where summing
        triplet by triplet is the cheaper way (`dcnn.models.angular.sum_by_density`: few neighbours per
        atom), else the padded table of the edges into each atom that the density sum runs on
        (`dcnn.models.angular.neighbour_table`).  Index arithmetic on the edges, outside the differentiable
        step; unchanged when a table is there."""
        n_atoms = graph.positions.shape[0]
        if TRIPLETS_KEY in graph.extras or DENSITY_TABLE in graph.extras:
            return graph
        if sum_by_density("gemnet_t", graph.edge_index, n_atoms, self.cbf_basis3.spherical):
            table, slot = neighbour_table(graph.edge_index[1], n_atoms)
            return dataclasses.replace(graph, extras={**graph.extras, DENSITY_TABLE: table, DENSITY_SLOT: slot})
        table = triplet_table(graph.edge_index[1], n_atoms)
        return dataclasses.replace(graph, extras={**graph.extras, TRIPLETS_KEY: table})

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """graph (positions Å; edges paired, as collate and molecule_graph make them) → energies [B]."""
        src, tgt = graph.edge_index
        n_atoms = graph.positions.shape[0]
        vec = -graph.edge_vectors()  # x_a − x_c − S·cell of edge c → a (fairchem's V_st direction)
        d = vec.norm(dim=-1)  # [E]
        unit = vec / d.unsqueeze(-1)
        rad_cbf3 = self.cbf_basis3(d)  # [E, R]
        rbf = self.radial_basis(d)
        inside = (d < self.cutoff).unsqueeze(-1).to(d.dtype)  # [E, 1]: the edges of fairchem's graph
        rbf_w1 = self.mlp_cbf3(rad_cbf3)  # [E, I, S]
        # φ_cab: angle at a between the edges c → a and b → a
        if TRIPLETS_KEY in graph.extras:
            angles = TripletAngles(unit, graph.extras[TRIPLETS_KEY], self.cbf_basis3.spherical, rbf_w1)
        else:
            angles = DensityAngles(unit, tgt, *density_tables(graph.extras, tgt, n_atoms),
                                   self.cbf_basis3.spherical, rbf_w1)

        h = self.atom_emb(graph.numbers - 1)  # [A, F_atom]
        m = self.edge_emb(h, rbf, src, tgt)  # [E, F]
        rbf3 = self.mlp_rbf3(rbf)
        rbf_h = self.mlp_rbf_h(rbf)
        rbf_out = self.mlp_rbf_out(rbf)

        energy = self.out_blocks[0](m, rbf_out, tgt, n_atoms, inside)  # [A, 1]
        for block, out in zip(self.int_blocks, self.out_blocks[1:]):
            h, m = block(h, m, rbf3, angles, inside, rbf_h, src, tgt)
            energy = energy + out(m, rbf_out, tgt, n_atoms, inside)
        return sum_per_structure(energy.squeeze(-1), graph)  # extensive: sum over each structure's atoms

    @torch.no_grad()
    def data_init_(self, forwards) -> dict:
        """Fit every ScaleFactor on data as fairchem's `fit_scaling_factors` does: all reset to 1, then one
        at a time in computation order, s = √(Var(ref) / Var(out)) accumulated over the batches that the
        callables `forwards` run (each one forward pass of this model on a training batch).  Returns
        {module path: s}."""
        factors = {m: name for name, m in self.named_modules() if isinstance(m, ScaleFactor)}
        order: list[ScaleFactor] = []

        def record(module, args, output):
            if module not in order:
                order.append(module)

        for m in factors:
            m.scale_factor.fill_(1.0)
        handles = [m.register_forward_hook(record) for m in factors]
        try:
            forwards[0]()
        finally:
            for h in handles:
                h.remove()
        fitted = {}
        for m in order:
            m.stats = [0.0, 0.0, 0]
            try:
                for forward in forwards:
                    forward()
                var_out, var_in, n = m.stats
            finally:
                m.stats = None
            if not (n > 0 and var_out > 0 and var_in > 0 and math.isfinite(var_out) and math.isfinite(var_in)):
                raise ValueError(f"GemNet-T scale factor {factors[m]}: cannot fit it on this data "
                                 f"(Var(out) = {var_out:.3g}, Var(ref) = {var_in:.3g} over {n} rows)")
            m.scale_factor.fill_(math.sqrt(var_in / var_out))
            fitted[factors[m]] = float(m.scale_factor)
        return fitted
