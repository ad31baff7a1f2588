"""SchNet (Schütt et al. 2017) for fixed-size molecules, laid out for speed in the force-training loop.

Same function as PyG's `SchNet` (same layers, same parameter shapes; `load_pyg_` copies weights), but:
the filter network is evaluated once per *unordered* pair (W_ij = W_ji) instead of per directed edge
(half the work of the dominant part of the model).
Messages are gathered/scattered with index ops on the small per-atom tensors only; the large per-pair
filter tensor is broadcast over both directions, never indexed (its index backward would zero-fill
big buffers under double backward).  No Python loops over atoms.
"""
from __future__ import annotations

import torch
from torch import nn

from dcnn.activations import get_activation
from legacy_dense.common import GaussianSmearing, PairGeometry, cosine_cutoff

SCHNET_PRESETS = {
    "small": dict(hidden=64, filters=64, interactions=3, gaussians=50, cutoff=6.0),
    "paper": dict(hidden=1024, filters=256, interactions=5, gaussians=200, cutoff=6.0),
}


class Interaction(nn.Module):
    """Filter MLP on the pair distances, CFConv (lin1 → filter-weighted neighbour sum → lin2) → act →
    lin, as in PyG — but the filter is evaluated once per unordered pair."""

    def __init__(self, hidden: int, filters: int, gaussians: int, activation: str):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(gaussians, filters), get_activation(activation),
                                 nn.Linear(filters, filters))
        self.lin1 = nn.Linear(hidden, filters, bias=False)
        self.lin2 = nn.Linear(filters, hidden)
        self.act = get_activation(activation)
        self.lin = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, rbf: torch.Tensor, envelope: torch.Tensor,
                gather: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
        """h [B, N, H]; rbf [B, 1, P, G] and envelope [B, 1, P, 1] of the unordered pairs i<j."""
        w = self.mlp(rbf) * envelope  # W_ij = W_ji: one filter per pair, broadcast over both directions
        x = self.lin1(h)
        b, p2, f = x.shape[0], gather.shape[0], x.shape[-1]
        xg = x.index_select(1, gather).view(b, 2, p2 // 2, f)  # (x_j; x_i) for each pair i<j
        m = torch.zeros_like(x).index_add(1, scatter, (w * xg).view(b, p2, f))  # m_i = Σ_j W_ij x_j
        return self.lin(self.act(self.lin2(m)))


class SchNet(nn.Module):
    """Energy model E(positions, numbers) with shifted-softplus activations throughout."""

    paper_activation_scope = ("",)  # the paper puts IReLU everywhere in SchNet

    def __init__(self, hidden=64, filters=64, interactions=3, gaussians=50, cutoff=6.0,
                 activation="ssp", max_z=100):
        super().__init__()
        self.cutoff = cutoff
        self.embedding = nn.Embedding(max_z, hidden)
        self.rbf = GaussianSmearing(0.0, cutoff, gaussians)
        self.geometry = PairGeometry()
        self.interactions = nn.ModuleList(Interaction(hidden, filters, gaussians, activation)
                                          for _ in range(interactions))
        self.readout = nn.Sequential(
            nn.Linear(hidden, hidden // 2), get_activation(activation), nn.Linear(hidden // 2, 1)
        )

    def forward(self, positions: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """positions [B, N, 3] (Å), numbers [N] → energies [B]."""
        b, n, _ = positions.shape
        gather, scatter, _ = self.geometry.directed(n, positions.device)  # (j; i) sources → (i; j) targets
        d = self.geometry.distances(positions).unsqueeze(1)  # [B, 1, P]
        rbf = self.rbf(d)
        envelope = cosine_cutoff(d, self.cutoff).unsqueeze(-1)
        h = self.embedding(numbers).expand(b, n, -1)
        for block in self.interactions:
            h = h + block(h, rbf, envelope, gather, scatter)
        return self.readout(h).sum(dim=(1, 2))

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
