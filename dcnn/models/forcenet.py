"""ForceNet (Hu et al. 2021), the energy-conserving variant the paper trained: an energy head, and forces
F = −∂E/∂x by autograd through every geometric term (not ForceNet's direct force decoder).

Follows OCP's `ocpmodels/models/forcenet.py` as adapted by the paper's code (lbai-lab/dcnn-training,
`models/Chemistry/forcenet/forcenet.py`: decoder removed, `regress_forces=True`, basis "gauss"):

* edge features: the distance d and the atomic-radius-shifted distances d − r_s, d − r_t, d − r_s − r_t
  (source s, target t), each divided by the cutoff and expanded in `gaussians` Gaussians on [0, 1]
  (OCP's `num_freqs`; 50 in the paper);
* interaction block (added residually, h ← h + block(h)): per directed edge a filter
  W_ts = MLP_edge([lin_basis(e_ts) ‖ h_s ‖ h_t]) · envelope(d) (depth 2: Linear, then 2 × (act, Linear)),
  then h'_t = MLP_node(Σ_s W_ts ⊙ lin(h)_s + c ⊙ lin(h)_t) with
  MLP_node = Linear, then depth × (BatchNorm1d, act, Linear) (depth 1 in the paper);
* output: act(Linear(h)) per atom, **summed** over each structure's atoms, then Linear → E.  Sum, as
  OCP's `scatter(..., reduce="add")`: energy is extensive, and for one fixed-size molecule a mean would only
  rescale the last layer.  The last Linear's bias is added once per structure (OCP's order: sum, then
  Linear), so E is extensive up to that one constant: a 2×1×1 supercell has 2E − b, not 2E (tested).
  OCP's `decoder_hidden_channels` is set equal to `hidden` (both 512 in the paper).

Deviations from the original, each forced by our setting or by energy conservation:

* **No direction features.**  The original also feeds the unit edge vector (x, y, z), squashed to [0, 1],
  into the Gaussian basis.  That makes E depend on the molecule's orientation (the original relies on
  forces being predicted directly); a single edge has no rotation-invariant directional feature (an
  invariant angle needs a second edge: triplets, i.e. DimeNet/GemNet), so we drop it — this is OCP's own
  "onlydist" ablation.  E is rotation- and translation-invariant and F equivariant (tested).
* **Smooth cutoff.**  The original uses a radius graph (hard cutoff) with edge weight cos(πd/(2 r_c)),
  which vanishes at r_c but with a non-zero slope, so its forces jump when an atom crosses the cutoff.  We
  use common.cosine_cutoff, ½(cos(πd/r_c) + 1), which is C¹ at r_c, on the graph layout
  (dcnn.atomistic.graph.AtomicGraph): a complete graph for fixed-size molecules (pairs beyond r_c are
  switched off by the envelope, exactly), a radius graph at r_c for periodic or variable-size data.
* **No clamp** of the shifted distances at 1e-3 (the original's `edge_dist_list[... < 1e-3] = 1e-3`):
  the clamp puts a kink in E (jumps in F) for bonded pairs whose d − r_s − r_t is near zero; the Gaussian
  basis is fine with small negative arguments.
* **Atom features**: a learned nn.Embedding (OCP's `feat="simple"`) instead of the default "full"
  continuous element properties (a 9-column table from OCP, not carried here); atomic radii are ASE's
  covalent radii (Cordero et al. 2008) instead of OCP's `ATOMIC_RADII` table.
* The node BatchNorm sees every atom of every structure in the batch, as OCP's does (a node-level
  quantity, so no masking is needed, unlike CGCNN's per-edge BatchNorm).  Train mode couples the
  structures of a batch; eval mode does not.

Activations (SiLU) are separate module instances so `replace_activations` can swap them.  The paper's
placement (`paper_activation_scope`): the 2 edge-MLP activations and the node-MLP activation of every
interaction block, plus the output activation — here that is every activation of the model, so
scope="paper" and scope="all" swap the same 3·interactions + 1 modules.

Quirk of the official code, which we do *not* reproduce: its `IAF_replace.replace_activation` swaps by
index — `interactions[k].mlp_trans[2] = act` — which is the activation in [Linear, BatchNorm1d, SiLU,
Linear].  In its denormalized copy (`ForceNet_NO_BN`) the BatchNorm line is commented out, so mlp_trans is
[Linear, SiLU, Linear] and index 2 is the last *Linear*: with DN, the IReLU runs replaced a Linear layer by
IReLU and left the SiLU in place (node MLP = Linear → SiLU → IReLU).  We do the intended replacement: by
module type, so with or without BatchNorm the node MLP's activation is swapped and its Linear layers stay.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dcnn.activations import get_activation
from dcnn.atomistic.graph import AtomicGraph
from dcnn.models.common import GaussianSmearing, cosine_cutoff, pair_distances, sum_per_structure

FORCENET_PRESETS = {
    "small": dict(hidden=64, interactions=3, gaussians=25, cutoff=6.0, depth_mlp_edge=2, depth_mlp_node=1),
    "paper": dict(hidden=512, interactions=5, gaussians=50, cutoff=6.0, depth_mlp_edge=2, depth_mlp_node=1),
}
N_DIST_FEATURES = 4  # d, d − r_s, d − r_t, d − r_s − r_t (each / cutoff)


def _covalent_radii(max_z: int) -> torch.Tensor:
    from ase.data import covalent_radii  # Å; index = atomic number

    radii = torch.zeros(max_z, dtype=torch.float64)
    n = min(max_z, len(covalent_radii))
    radii[:n] = torch.as_tensor(covalent_radii[:n], dtype=torch.float64)
    return radii.float()


class InteractionBlock(nn.Module):
    """OCP's ForceNet InteractionBlock (basis "gauss", no ablation) on the graph layout's directed edges."""

    def __init__(self, hidden: int, basis_dim: int, depth_mlp_edge: int = 2, depth_mlp_node: int = 1,
                 activation: str = "silu"):
        super().__init__()
        if depth_mlp_edge < 1 or depth_mlp_node < 1:
            raise ValueError("depth_mlp_edge and depth_mlp_node must be ≥ 1 (OCP's depth-0 variants are "
                             "its 'edgelinear'/'nodelinear' ablations, not built here)")
        self.hidden = hidden
        self.lin_basis = nn.Linear(basis_dim, hidden)
        edge: list[nn.Module] = [nn.Linear(3 * hidden, hidden)]  # on [edge_emb ‖ h_source ‖ h_target]
        for _ in range(depth_mlp_edge):
            edge += [get_activation(activation), nn.Linear(hidden, hidden)]
        self.mlp_edge = nn.Sequential(*edge)
        self.lin = nn.Linear(hidden, hidden)
        node: list[nn.Module] = [nn.Linear(hidden, hidden)]
        for _ in range(depth_mlp_node):
            node += [nn.BatchNorm1d(hidden), get_activation(activation), nn.Linear(hidden, hidden)]
        self.mlp_node = nn.Sequential(*node)  # OCP: mlp_trans
        self.center_W = nn.Parameter(torch.empty(1, hidden))
        self.reset_parameters()

    def reset_parameters(self):
        for m in [self.lin_basis, self.lin, *self.mlp_edge, *self.mlp_node]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.xavier_uniform_(self.center_W)

    def forward(self, h: torch.Tensor, basis: torch.Tensor, env: torch.Tensor, source: torch.Tensor,
                target: torch.Tensor) -> torch.Tensor:
        """h [A, H]; basis [E, 4G] and env [E, 1] of the directed edges source → target ([E] each)."""
        d = self.hidden
        first = self.mlp_edge[0]  # Linear(3H, H) applied blockwise: the atom blocks once per atom, gathered
        w_e, w_s, w_t = first.weight.split(d, dim=1)
        # lin_basis then the edge block of `first`: two linear maps, applied to the edges as one
        # (W_e·W_b, W_e·b_b + b): 4G·H instead of (4G + H)·H multiply-adds per edge, in every pass of training
        z = F.linear(basis, w_e @ self.lin_basis.weight, F.linear(self.lin_basis.bias, w_e, first.bias))
        z = z + F.linear(h, w_s).index_select(0, source) + F.linear(h, w_t).index_select(0, target)
        for layer in self.mlp_edge[1:]:
            z = layer(z)
        w = z * env  # filter W_ts, switched off smoothly past the cutoff
        x = self.lin(h)
        msg = torch.zeros_like(x).index_add(0, target, w * x.index_select(0, source))  # Σ_s W_ts ⊙ x_s
        x = msg + self.center_W * x
        return self.mlp_node(x)  # BatchNorm1d over every atom of the batch


class ForceNet(nn.Module):
    """Energy model E(graph) → energies [B] (dcnn.atomistic.graph.AtomicGraph, positions in Å)."""

    paper_activation_scope = ("interactions", "output")  # edge- and node-MLP activations, output activation
    task_args = ("max_z",)  # the element-embedding size (dcnn.models.MAX_Z): not a size a study varies

    def __init__(self, hidden=64, interactions=3, gaussians=25, cutoff=6.0, depth_mlp_edge=2,
                 depth_mlp_node=1, activation="silu", max_z=100):
        super().__init__()
        self.cutoff = cutoff
        self.embedding = nn.Embedding(max_z, hidden)
        self.register_buffer("radii", _covalent_radii(max_z))
        self.rbf = GaussianSmearing(0.0, 1.0, gaussians)  # on distances / cutoff, as OCP's basis "gauss"
        basis_dim = N_DIST_FEATURES * gaussians
        self.interactions = nn.ModuleList(
            InteractionBlock(hidden, basis_dim, depth_mlp_edge, depth_mlp_node, activation)
            for _ in range(interactions))
        self.output = nn.Sequential(nn.Linear(hidden, hidden), get_activation(activation))  # OCP: lin, activation
        self.energy_mlp = nn.Linear(hidden, 1)

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """graph (positions Å) → energies [B]."""
        source, target = graph.edge_index
        d = pair_distances(graph).repeat(2).unsqueeze(-1)  # [E, 1]: a pair's distance for both directions
        r = self.radii.to(d.dtype)[graph.numbers]
        r_s, r_t = r.index_select(0, source).unsqueeze(-1), r.index_select(0, target).unsqueeze(-1)
        feats = torch.cat([d, d - r_s, d - r_t, d - r_s - r_t], dim=-1) / self.cutoff  # [E, 4]: directed
        basis = self.rbf(feats).flatten(-2)  # [E, 4G], feature-major blocks
        env = cosine_cutoff(d, self.cutoff)
        h = self.embedding(graph.numbers)
        for block in self.interactions:
            h = h + block(h, basis, env, source, target)
        return self.energy_mlp(sum_per_structure(self.output(h), graph)).squeeze(-1)
