"""SchNet (Schütt et al. 2017) for fixed-size molecules, laid out for speed in the force-training loop.

Same function as PyG's `SchNet` (same layers, same parameter shapes; `from_pyg` copies weights), but:
the filter network is evaluated once per *unordered* pair (W_ij = W_ji) instead of per directed edge,
and the filter networks of all interaction blocks run as one wide matmul plus one batched matmul.
Message passing is a dense gather + reduction over [B, N, N, F]; no scatter, no Python loops over atoms.
"""
from __future__ import annotations

import torch
from torch import nn

from dcnn.activations import get_activation
from dcnn.models.common import GaussianSmearing, PairGeometry, cosine_cutoff

SCHNET_PRESETS = {
    "small": dict(hidden=64, filters=64, interactions=3, gaussians=50, cutoff=6.0),
    "paper": dict(hidden=1024, filters=256, interactions=5, gaussians=200, cutoff=6.0),
}


class FusedFilterNetwork(nn.Module):
    """The T interaction blocks' filter MLPs (Linear(G,F) → act → Linear(F,F)) evaluated together."""

    def __init__(self, gaussians: int, filters: int, interactions: int, activation: str):
        super().__init__()
        self.interactions, self.filters = interactions, filters
        self.lin1 = nn.Linear(gaussians, interactions * filters)
        self.act = get_activation(activation)
        self.weight2 = nn.Parameter(torch.empty(interactions, filters, filters))  # [T, in, out]
        self.bias2 = nn.Parameter(torch.empty(interactions, filters))
        bound = filters**-0.5
        nn.init.uniform_(self.weight2, -bound, bound)
        nn.init.uniform_(self.bias2, -bound, bound)

    def forward(self, rbf: torch.Tensor) -> torch.Tensor:
        """rbf [M, G] → filters [T, M, F]."""
        h = self.act(self.lin1(rbf)).view(-1, self.interactions, self.filters).transpose(0, 1)
        return torch.baddbmm(self.bias2.unsqueeze(1), h, self.weight2)


class Interaction(nn.Module):
    """CFConv (lin1 → filter-weighted sum over neighbours → lin2) → act → lin, as in PyG."""

    def __init__(self, hidden: int, filters: int, activation: str):
        super().__init__()
        self.lin1 = nn.Linear(hidden, filters, bias=False)
        self.lin2 = nn.Linear(filters, hidden)
        self.act = get_activation(activation)
        self.lin = nn.Linear(hidden, hidden)

    def forward(self, h: torch.Tensor, w_dense: torch.Tensor) -> torch.Tensor:
        """h [B, N, H]; w_dense [B, N, N, F] (zero on the diagonal and beyond the cutoff)."""
        x = self.lin1(h)
        m = (w_dense * x.unsqueeze(1)).sum(2)
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
        self.filter_net = FusedFilterNetwork(gaussians, filters, interactions, activation)
        self.interactions = nn.ModuleList(Interaction(hidden, filters, activation) for _ in range(interactions))
        self.readout = nn.Sequential(
            nn.Linear(hidden, hidden // 2), get_activation(activation), nn.Linear(hidden // 2, 1)
        )

    def forward(self, positions: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """positions [B, N, 3] (Å), numbers [N] → energies [B]."""
        b, n, _ = positions.shape
        _, _, dense_index, _ = self.geometry.tables(n, positions.device)
        d = self.geometry.distances(positions)  # [B, P]
        w = self.filter_net(self.rbf(d).view(b * d.shape[1], -1))  # [T, B*P, F]
        w = w * cosine_cutoff(d, self.cutoff).view(1, -1, 1)
        t, _, f = w.shape
        w = torch.nn.functional.pad(w.view(t, b, -1, f), (0, 0, 0, 1))  # padding pair for i == j
        w_dense = w[:, :, dense_index].view(t, b, n, n, f)
        h = self.embedding(numbers).expand(b, n, -1)
        for k, block in enumerate(self.interactions):
            h = h + block(h, w_dense[k])
        return self.readout(h).sum(dim=(1, 2))

    @torch.no_grad()
    def load_pyg_(self, pyg: nn.Module) -> "SchNet":
        """Copy the weights of a `torch_geometric.nn.models.SchNet` with the same sizes (for checks)."""
        self.embedding.weight.copy_(pyg.embedding.weight)
        fn = self.filter_net
        for k, blk in enumerate(pyg.interactions):
            sl = slice(k * fn.filters, (k + 1) * fn.filters)
            fn.lin1.weight[sl] = blk.mlp[0].weight
            fn.lin1.bias[sl] = blk.mlp[0].bias
            fn.weight2[k] = blk.mlp[2].weight.T
            fn.bias2[k] = blk.mlp[2].bias
            ours = self.interactions[k]
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
