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


def _radius_graph_all_pairs(pos, r, batch=None, max_num_neighbors=None, **_):
    """Plain-torch stand-in for `torch_geometric.nn.radius_graph` (no torch-cluster): all pairs of the
    same molecule closer than r, as (source j, target i); no neighbour cap."""
    if batch is None:
        batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
    same = batch.unsqueeze(0) == batch.unsqueeze(1)
    mask = same & (torch.cdist(pos.detach(), pos.detach()) < r)
    mask.fill_diagonal_(False)
    return mask.nonzero().T


def _triplets_plain(edge_index, num_nodes):
    """Plain-torch stand-in for `torch_geometric.nn.models.dimenet.triplets` (no torch-sparse/pyg-lib):
    for each edge j → i every edge k → j with k ≠ i; same return values."""
    row, col = edge_index  # j -> i
    # pairs (edge ji, edge kj) with source(ji) == target(kj)
    idx_ji, idx_kj = (row.unsqueeze(1) == col.unsqueeze(0)).nonzero().T
    keep = row[idx_kj] != col[idx_ji]  # k != i
    idx_ji, idx_kj = idx_ji[keep], idx_kj[keep]
    idx_i, idx_j, idx_k = col[idx_ji], row[idx_ji], row[idx_kj]
    return col, row, idx_i, idx_j, idx_k, idx_kj, idx_ji


def build_pyg_dimenetpp(hidden: int, blocks: int, int_emb: int, basis_emb: int, out_emb: int,
                        spherical: int, radial: int, cutoff: float, envelope_exponent: int = 5,
                        before_skip: int = 1, after_skip: int = 2, output_layers: int = 3):
    """PyG's DimeNetPlusPlus whose radius graph and triplets are computed in plain torch (its own need
    torch-cluster and torch-sparse/pyg-lib): the module globals are swapped only during its forward."""
    import torch_geometric.nn.models.dimenet as pyg_dimenet

    class PlainDimeNetPlusPlus(pyg_dimenet.DimeNetPlusPlus):
        def forward(self, z, pos, batch=None):
            saved = pyg_dimenet.radius_graph, pyg_dimenet.triplets
            pyg_dimenet.radius_graph, pyg_dimenet.triplets = _radius_graph_all_pairs, _triplets_plain
            try:
                return super().forward(z, pos, batch)
            finally:
                pyg_dimenet.radius_graph, pyg_dimenet.triplets = saved

    return PlainDimeNetPlusPlus(
        hidden_channels=hidden, out_channels=1, num_blocks=blocks, int_emb_size=int_emb,
        basis_emb_size=basis_emb, out_emb_channels=out_emb, num_spherical=spherical, num_radial=radial,
        cutoff=cutoff, max_num_neighbors=1 << 30, envelope_exponent=envelope_exponent,
        num_before_skip=before_skip, num_after_skip=after_skip, num_output_layers=output_layers,
        act="swish", output_initializer="glorot_orthogonal")
