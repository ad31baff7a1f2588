"""PyG's SchNet set up as our peer: same sizes, all pairs within the cutoff as its graph.

Used by the correctness test (our SchNet with PyG's weights must give PyG's E and F) and by the
benchmark.  torch-geometric is a dev dependency, imported only here.
"""
from __future__ import annotations

import torch
from torch import nn


class AllPairsWithinCutoff(nn.Module):
    """PyG `interaction_graph`: every pair of atoms of the same molecule closer than the cutoff.

    PyG's default radius graph needs compiled extensions (torch-cluster) that PyPI does not ship
    for this torch; this pure-torch version gives the same edges (and no neighbour cap).
    """

    def __init__(self, cutoff: float):
        super().__init__()
        self.cutoff = cutoff

    def forward(self, pos: torch.Tensor, batch: torch.Tensor):
        same = batch.unsqueeze(0) == batch.unsqueeze(1)
        dist = torch.cdist(pos.detach(), pos.detach())
        mask = same & (dist < self.cutoff)
        mask.fill_diagonal_(False)
        edge_index = mask.nonzero().T
        edge_weight = (pos[edge_index[0]] - pos[edge_index[1]]).norm(dim=-1)
        return edge_index, edge_weight


def build_pyg_schnet(hidden: int, filters: int, interactions: int, gaussians: int, cutoff: float):
    from torch_geometric.nn.models import SchNet as PygSchNet

    return PygSchNet(hidden_channels=hidden, num_filters=filters, num_interactions=interactions,
                     num_gaussians=gaussians, cutoff=cutoff,
                     interaction_graph=AllPairsWithinCutoff(cutoff))
