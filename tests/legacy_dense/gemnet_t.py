"""GemNet-T (Gasteiger et al. 2021), energy-conserving, for fixed-size molecules, in plain torch.

Follows fairchem's `fairchem/core/models/gemnet/` (gemnet.py, layers/*: the triplet-only interaction
block, the efficient bilinear layer, the Gaussian/spherical-Bessel radial bases with the polynomial
envelope, the Y_l0 circular basis, He-orthogonal init, ScaledSiLU) layer for layer, with the same module
names and parameter shapes (so a fairchem state_dict loads, see `load_fairchem_`), and as the paper's code
configured it (lbai-lab/dcnn-training `models/Chemistry/gemnet/gemnet.py`: fairchem's OC20 "gemnet-dT"
sizes with `direct_forces=False`, i.e. forces by autograd; that is GemNet-T in the GemNet paper's naming,
"d" meaning direct forces).  What differs, and why:

* **Graph** = every ordered atom pair s → t (s ≠ t) and, for each edge c → a, every other edge b → a into
  the same atom (b ∉ {a, c}): index tables built once per atom count, no radius search, no sparse tensors,
  no torch_scatter.  Edges are target-major, so "sum over the edges into atom t" is a reshape and a sum,
  and the efficient bilinear layer's zero-padded [edges, K_max, ·] matrices are dense ([E, N−2, ·]).
  fairchem's radius graph (6 Å, 50 neighbours: no cap for MD17-sized molecules) is reproduced exactly:
  every path from an edge's embedding to the energy is multiplied by a radial basis of that edge, which
  the envelope zeroes beyond the cutoff, except the triplet path (the down projection's activation of a
  zero vector is act(0)), so the triplet messages of edges beyond the cutoff are masked out.  With the
  original ScaledSiLU (act(0) = 0) the mask changes nothing and E is C² in the positions as an atom
  crosses the cutoff (envelope exponent 5); with scope="all" and an activation with act(0) ≠ 0 (isilu,
  igelu, softplus) E jumps there, exactly as on fairchem's radius graph.
* **Forces** = −∂E/∂x by autograd through the distances *and* the triplet angles (cos φ from unit vectors
  of the non-detached positions; clamped to [−1, 1] as fairchem's `inner_product_normalized`).
* **Scale factors**: fairchem multiplies five places per block by constants fitted on data (the paper's
  code loaded OC20's `gemnet-dT.json`, e.g. 18.9 for TripInteraction_1_had_rbf); unfitted, fairchem uses 1,
  which is what a built model holds.  Unfitted, GemNet is not at the scale it was designed for (initial
  rescaled forces ≈ 1.3 against labels ≈ 1e-3 on ethanol), so training fits them on the training data
  before the first step, as fairchem's `fit_scaling_factors` does (`data_init_`, called by the task for
  every `init`; each factor in computation order makes its output's variance that of its reference
  input, or 1, over 16 batches), after the activations are swapped: the factors match the network that
  is trained.  `ScaleFactor` modules hold them as buffers, so they are in every checkpoint.
* **Activations**: `Dense` keeps its activation as a separate `Activation` module ("scaled_silu" =
  SiLU/0.6, fairchem's ScaledSiLU) so `replace_activations` can swap it; a Dense without activation holds
  none.  The paper's placement swaps the output blocks' activations only (its IAF_replace: every
  `out_blocks[k].layers[*]` activation, 1 + 2·num_atom per block).
* Atom embeddings: `nn.Embedding(max_z − 1, emb_atom)` indexed by Z − 1 (fairchem: 83 elements).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from dcnn.activations import get_activation
from legacy_dense.common import GaussianSmearing
from legacy_dense.dimenetpp import legendre_cbf

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
    rows `rows` marks (edges inside the cutoff: the edges of fairchem's radius graph), and the row count."""
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
    parameters) and Y_l0(cos φ_cab), l < spherical, of the angle at a."""

    def __init__(self, spherical: int, radial: int, cutoff: float, rbf: str, envelope_exponent: int):
        super().__init__()
        self.spherical = spherical
        self.radial_basis = RadialBasis(radial, cutoff, rbf, envelope_exponent)

    def forward(self, d, cos):
        return self.radial_basis(d), legendre_cbf(self.spherical, cos)


# ----------------------------------------------------------------------------- graph tables

class EdgeTripletTables(nn.Module):
    """Index tables of the all-pairs graph of an N-atom molecule (cached per N and device).

    Edges s → t target-major: e = t·(N−1) + rank of s among the atoms ≠ t.  `swap[e]` is the edge t → s.
    `id3_ba` [E, N−2]: for each edge c → a, the other edges b → a into the same atom (fairchem's
    id3_ba/id3_ca pairs, padded matrix row e = id3_ca)."""

    def __init__(self):
        super().__init__()
        self._cache: dict = {}

    def tables(self, n: int, device: torch.device):
        key = (n, str(device))
        if key not in self._cache:
            ar = torch.arange(n, device=device)
            tgt = ar.repeat_interleave(n - 1)
            src = ar.expand(n, n)[~torch.eye(n, dtype=torch.bool, device=device)]
            edge_id = torch.full((n, n), -1, dtype=torch.long, device=device)
            edge_id[tgt, src] = torch.arange(tgt.numel(), device=device)
            swap = edge_id[src, tgt]
            r = torch.arange(n - 1, device=device)
            other = r.expand(n - 1, n - 1)[r[:, None] != r[None, :]].view(n - 1, max(n - 2, 0))
            id3_ba = ((ar * (n - 1))[:, None, None] + other[None]).reshape(tgt.numel(), max(n - 2, 0))
            self._cache[key] = (tgt, src, swap, id3_ba)
        return self._cache[key]


# ----------------------------------------------------------------------------- blocks

def sum_into_targets(x: torch.Tensor, n_atoms: int) -> torch.Tensor:
    """[B, E, F] edge values → [B, N, F] sums over the edges into each atom (edges are target-major)."""
    b, _, f = x.shape
    return x.view(b, n_atoms, n_atoms - 1, f).sum(2)


class EdgeEmbedding(nn.Module):
    """m_st = act(W [h_s ‖ h_t ‖ m]); W is split so the atom parts are computed per atom, then gathered."""

    def __init__(self, atom_features: int, edge_features: int, out_features: int, activation: str):
        super().__init__()
        self.atom_features = atom_features
        self.dense = Dense(2 * atom_features + edge_features, out_features, activation)

    def forward(self, h, m, src, tgt):
        """h [N, A] or [B, N, A]; m [B, E, F]."""
        a = self.atom_features
        w = self.dense.linear.weight
        hs = F.linear(h, w[:, :a])
        ht = F.linear(h, w[:, a:2 * a])
        x = hs.index_select(-2, src) + ht.index_select(-2, tgt) + F.linear(m, w[:, 2 * a:])
        return self.dense.act(x)


class AtomUpdateBlock(nn.Module):
    """h = MLP(scale · Σ_{edges into the atom} m ⊙ W rbf)."""

    def __init__(self, emb_atom, emb_edge, emb_rbf, n_hidden, activation):
        super().__init__()
        self.dense_rbf = Dense(emb_rbf, emb_edge)
        self.scale_sum = ScaleFactor()
        self.layers = nn.ModuleList([Dense(emb_edge, emb_atom, activation),
                                     *(ResidualLayer(emb_atom, activation) for _ in range(n_hidden))])

    def forward(self, m, rbf, n_atoms, inside=None):
        x = self.scale_sum(sum_into_targets(m * self.dense_rbf(rbf), n_atoms), ref=m, ref_rows=inside)
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

    def forward(self, m, rbf, n_atoms, inside=None):
        return self.out_energy(super().forward(m, rbf, n_atoms, inside))


class EfficientInteractionDownProjection(nn.Module):
    """The triplet basis' radial part projected down: rbf(d_ca) · W [S, R, I] → [B, E, I, S]."""

    def __init__(self, spherical, radial, emb_interm):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(spherical, radial, emb_interm))
        he_orthogonal_(self.weight)

    def forward(self, rbf):
        return torch.einsum("ber,sri->beis", rbf, self.weight)


class EfficientInteractionBilinear(nn.Module):
    """m_ca = Σ_{t,i} W[t, i, o] · Σ_s rbf_W1[ca, i, s] · Σ_b Y_s(φ_cab) x_ba[t]: the bilinear layer and
    the sum over the triplets, in the order of fairchem's efficient reformulation."""

    def __init__(self, emb_trip, emb_interm, units_out):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(emb_trip, emb_interm, units_out))
        he_orthogonal_(self.weight)

    def forward(self, rbf_w1, sph, x_ba):
        """rbf_w1 [B, E, I, S]; sph [B, E, K, S]; x_ba [B, E, K, T] (the K edges b → a of each edge c → a)."""
        sum_k = torch.matmul(sph.transpose(-1, -2), x_ba)  # [B, E, S, T]
        r = torch.matmul(rbf_w1, sum_k)  # [B, E, I, T]
        t, i, o = self.weight.shape
        return torch.matmul(r.transpose(-1, -2).flatten(-2), self.weight.reshape(t * i, o))  # [B, E, O]


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

    def forward(self, m, rbf3, rbf_w1, sph, id3_ba, swap, inside):
        x_ba = self.dense_ba(m)
        x_ba = self.scale_rbf(x_ba * self.mlp_rbf(rbf3), ref=x_ba, rows=inside, ref_rows=inside)
        x_ba = self.down_projection(x_ba) * inside  # edges beyond the cutoff are not in the graph
        b, e, t = x_ba.shape
        x_ba = x_ba.index_select(1, id3_ba.reshape(-1)).view(b, e, id3_ba.shape[1], t)
        triplets = None
        if self.scale_cbf_sum.stats is not None:  # fitting: the triplets of fairchem's graph (both edges inside)
            triplets = inside.unsqueeze(2) * inside.index_select(1, id3_ba.reshape(-1)).view(b, e, -1, 1)
        x = self.scale_cbf_sum(self.mlp_cbf(rbf_w1, sph, x_ba), ref=x_ba, rows=inside, ref_rows=triplets)
        x_ca = self.up_projection_ca(x)
        x_ac = self.up_projection_ac(x).index_select(1, swap)  # message of a → c added to c → a
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

    def forward(self, h, m, rbf3, rbf_w1, sph, id3_ba, swap, inside, rbf_h, src, tgt):
        n = h.shape[-2]
        x = (self.dense_ca(m) + self.trip_interaction(m, rbf3, rbf_w1, sph, id3_ba, swap, inside)) * INV_SQRT_2
        for layer in self.layers_before_skip:
            x = layer(x)
        m = (m + x) * INV_SQRT_2
        for layer in self.layers_after_skip:
            m = layer(m)
        h = (h + self.atom_update(m, rbf_h, n, inside)) * INV_SQRT_2
        m2 = self.concat_layer(h, m, src, tgt)
        for layer in self.residual_m:
            m2 = layer(m2)
        return h, (m + m2) * INV_SQRT_2


# ----------------------------------------------------------------------------- model

class GemNetT(nn.Module):
    """Energy model E(positions, numbers): GemNet-T with ScaledSiLU, forces by autograd."""

    paper_activation_scope = ("out_blocks",)  # the paper swaps the output blocks' activations only

    def __init__(self, blocks=2, emb_atom=32, emb_edge=32, emb_trip=16, emb_rbf=8, emb_cbf=8, emb_bil_trip=16,
                 spherical=5, radial=16, cutoff=6.0, before_skip=1, after_skip=2, concat=1, num_atom=3,
                 rbf="gaussian", envelope_exponent=5, output_init="HeOrthogonal", activation="scaled_silu",
                 max_z=100):
        super().__init__()
        if spherical < 1:
            raise ValueError("spherical must be at least 1")
        self.cutoff = cutoff
        self.geometry = EdgeTripletTables()
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

    def forward(self, positions: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """positions [B, N, 3] (Å), numbers [N] → energies [B]."""
        b, n, _ = positions.shape
        tgt, src, swap, id3_ba = self.geometry.tables(n, positions.device)
        vec = positions[:, tgt] - positions[:, src]  # x_t − x_s of edge s → t (fairchem's V_st direction)
        d = vec.norm(dim=-1)  # [B, E]
        unit = vec / d.unsqueeze(-1)
        k = id3_ba.shape[1]
        # φ_cab: angle at a between the edges c → a (row) and b → a (column)
        cos = (unit.unsqueeze(2) * unit.index_select(1, id3_ba.reshape(-1)).view(b, -1, k, 3)).sum(-1)
        rad_cbf3, sph = self.cbf_basis3(d, cos.clamp(-1, 1))  # [B, E, R], [B, E, K, S]
        rbf = self.radial_basis(d)
        inside = (d < self.cutoff).unsqueeze(-1).to(d.dtype)

        h = self.atom_emb(numbers - 1)  # [N, A]
        m = self.edge_emb(h, rbf, src, tgt)  # [B, E, F]
        rbf3 = self.mlp_rbf3(rbf)
        rbf_w1 = self.mlp_cbf3(rad_cbf3)
        rbf_h = self.mlp_rbf_h(rbf)
        rbf_out = self.mlp_rbf_out(rbf)

        energy = self.out_blocks[0](m, rbf_out, n, inside)
        for block, out in zip(self.int_blocks, self.out_blocks[1:]):
            h, m = block(h, m, rbf3, rbf_w1, sph, id3_ba, swap, inside, rbf_h, src, tgt)
            energy = energy + out(m, rbf_out, n, inside)
        return energy.sum(dim=(1, 2))  # extensive: sum over atoms

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
