"""SchNet (Schütt et al. 2017) on the graph layout (dcnn.atomistic.graph.AtomicGraph), laid out for speed in
the force-training loop.

Same function as PyG's `SchNet` (same layers, same parameter shapes; `load_pyg_` copies weights), but:
the filter network is evaluated once per *pair* (W_ij = W_ji: the distance is symmetric) instead of per
directed edge, half the work of the dominant part of the model — the graph's edges come paired (edge m and
m + P are reverses), so the [P, F] filter is broadcast over both directions as a view, never indexed (its
index backward would zero-fill big buffers under double backward).  Messages are gathered and scattered
on the small per-atom tensors only.  No Python loops over atoms; molecules (a complete graph), slabs and
crystals (periodic images in the edge list) alike.
"""
from __future__ import annotations

import torch
from torch import nn

from dcnn.activations import get_activation
from dcnn.atomistic.graph import AtomicGraph
from dcnn.models.common import GaussianSmearing, cosine_cutoff, pair_distances, sum_per_structure

SCHNET_PRESETS = {
    "small": dict(hidden=64, filters=64, interactions=3, gaussians=50, cutoff=6.0),
    "paper": dict(hidden=1024, filters=256, interactions=5, gaussians=200, cutoff=6.0),
}


class Interaction(nn.Module):
    """Filter MLP on the pair distances, CFConv (lin1 → filter-weighted neighbour sum → lin2) → act →
    lin, as in PyG — but the filter is evaluated once per pair."""

    def __init__(self, hidden: int, filters: int, gaussians: int, activation: str):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(gaussians, filters), get_activation(activation),
                                 nn.Linear(filters, filters))
        self.lin1 = nn.Linear(hidden, filters, bias=False)
        self.lin2 = nn.Linear(filters, hidden)
        self.act = get_activation(activation)
        self.lin = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, rbf: torch.Tensor, envelope: torch.Tensor,
                source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """h [A, H]; rbf [P, G] and envelope [P, 1] of the pairs; source/target [2P] (paired edges)."""
        w = self.mlp(rbf) * envelope  # W_ij = W_ji: one filter per pair, broadcast over both directions
        x = self.lin1(h)
        p, f = w.shape
        xg = x.index_select(0, source).view(2, p, f)  # x_j of each edge, forward directions then reverses
        m = torch.zeros_like(x).index_add(0, target, (w * xg).view(2 * p, f))  # m_i = Σ_j W_ij x_j
        return self.lin(self.act(self.lin2(m)))


class SchNet(nn.Module):
    """Energy model E(graph) with shifted-softplus activations throughout."""

    paper_activation_scope = ("",)  # the paper puts IReLU everywhere in SchNet
    task_args = ("max_z",)  # the element-embedding size (dcnn.models.MAX_Z): not a size a study varies

    def __init__(self, hidden=64, filters=64, interactions=3, gaussians=50, cutoff=6.0,
                 activation="ssp", max_z=100):
        super().__init__()
        self.cutoff = cutoff
        self.embedding = nn.Embedding(max_z, hidden)
        self.rbf = GaussianSmearing(0.0, cutoff, gaussians)
        self.interactions = nn.ModuleList(Interaction(hidden, filters, gaussians, activation)
                                          for _ in range(interactions))
        self.readout = nn.Sequential(
            nn.Linear(hidden, hidden // 2), get_activation(activation), nn.Linear(hidden // 2, 1)
        )

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """graph (positions Å) → energies [B]: the per-atom readout summed per structure."""
        source, target = graph.edge_index
        d = pair_distances(graph)  # [P]
        rbf = self.rbf(d)
        envelope = cosine_cutoff(d, self.cutoff).unsqueeze(-1)
        h = self.embedding(graph.numbers)
        for block in self.interactions:
            h = h + block(h, rbf, envelope, source, target)
        return sum_per_structure(self.readout(h).squeeze(-1), graph)

    @torch.no_grad()
    def load_pyg_(self, pyg: nn.Module) -> "SchNet":
        """Copy the weights of a `torch_geometric.nn.models.SchNet` with the same sizes (for checks)."""
        self.embedding.weight.copy_(pyg.embedding.weight)
        for k, blk in enumerate(pyg.interactions):
            ours = self.interactions[k]
            ours.mlp.load_state_dict(blk.mlp.state_dict())
            ours.lin1.weight.copy_(blk.conv.lin1.weight)
            ours.lin2.weight.copy_(blk.conv.lin2.weight)
            ours.lin2.bias.copy_(blk.conv.lin2.bias)
            ours.lin.weight.copy_(blk.lin.weight)
            ours.lin.bias.copy_(blk.lin.bias)
        self.readout[0].weight.copy_(pyg.lin1.weight)
        self.readout[0].bias.copy_(pyg.lin1.bias)
        self.readout[2].weight.copy_(pyg.lin2.weight)
        self.readout[2].bias.copy_(pyg.lin2.bias)
        return self
