"""Geometry shared by the models: all-pairs distances of fixed-size molecules, radial bases, cutoffs.

MD17-style data sets hold one molecule (fixed atom count and order), so a batch is a dense tensor
[B, N, 3] and the neighbour "graph" is every atom pair: no radius search, no scatter, no Python loops.
Pairs beyond the cutoff are switched off smoothly by the cosine envelope, which keeps E continuous and
forces conservative.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class PairGeometry(nn.Module):
    """Index tables for the N(N−1)/2 unordered pairs of an N-atom molecule (cached per N and device)."""

    def __init__(self):
        super().__init__()
        self._cache: dict[tuple[int, torch.device], tuple[torch.Tensor, ...]] = {}

    def tables(self, n_atoms: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(i, j) of unordered pairs i<j; `dense_index` [N*N] mapping (i, j) to its pair (diagonal → P);
        `offdiag` [N(N−1)] flat positions of ordered pairs i≠j, row-major."""
        key = (n_atoms, device)
        if key not in self._cache:
            iu, ju = torch.triu_indices(n_atoms, n_atoms, offset=1, device=device)
            n_pairs = iu.numel()
            dense = torch.full((n_atoms, n_atoms), n_pairs, dtype=torch.long, device=device)
            pair_id = torch.arange(n_pairs, device=device)
            dense[iu, ju] = pair_id
            dense[ju, iu] = pair_id
            flat = torch.arange(n_atoms * n_atoms, device=device).view(n_atoms, n_atoms)
            offdiag = flat[~torch.eye(n_atoms, dtype=torch.bool, device=device)]
            self._cache[key] = (iu, ju, dense.view(-1), offdiag)
        return self._cache[key]

    def directed(self, n_atoms: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For the 2P directed pairs, unordered pairs first as (i<j) then as (j>i): `sources` (j; i),
        `targets` (i; j); and `offdiag_pair` [N(N−1)]: the unordered pair of each ordered pair i≠j."""
        key = ("directed", n_atoms, device)
        if key not in self._cache:
            iu, ju, dense, offdiag = self.tables(n_atoms, device)
            self._cache[key] = (torch.cat([ju, iu]), torch.cat([iu, ju]), dense[offdiag])
        return self._cache[key]

    def distances(self, positions: torch.Tensor) -> torch.Tensor:
        """Distances [B, P] of the unordered pairs."""
        iu, ju, _, _ = self.tables(positions.shape[1], positions.device)
        return (positions[:, ju] - positions[:, iu]).norm(dim=-1)


class GaussianSmearing(nn.Module):
    """exp(−½((d − μ_k)/Δ)²) on an even grid of centres μ_k in [start, stop] (SchNet/CGCNN's basis)."""

    def __init__(self, start: float, stop: float, n_gaussians: int):
        super().__init__()
        offset = torch.linspace(start, stop, n_gaussians)
        self.coeff = -0.5 / float(offset[1] - offset[0]) ** 2
        self.register_buffer("offset", offset)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (d.unsqueeze(-1) - self.offset) ** 2)


def cosine_cutoff(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """½(cos(πd/r_c) + 1) inside the cutoff, 0 outside (C¹ at r_c; clamping gives 0 and zero slope
    beyond r_c without a mask op)."""
    return 0.5 * (torch.cos(d.clamp(max=cutoff) * (math.pi / cutoff)) + 1.0)


# -- the graph layout (dcnn.atomistic.graph.AtomicGraph) --------------------------------------------------
def pair_distances(graph) -> torch.Tensor:
    """|r_ij| [P] of the graph's pairs (the first half of its paired edges; the reverses have the same)."""
    return graph.edge_vectors(slice(0, graph.n_pairs)).norm(dim=-1)


def scatter_sum(src: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """Σ over rows of `src` [E, ...] into `size` rows by `index` [E] (index_add: no torch_scatter needed)."""
    return src.new_zeros((size, *src.shape[1:])).index_add(0, index, src)


def sum_per_structure(per_atom: torch.Tensor, graph) -> torch.Tensor:
    """Per-atom values [A] summed over each structure's atoms → [B] (an extensive energy)."""
    return scatter_sum(per_atom, graph.batch, graph.n_structures)


def mean_per_structure(per_atom: torch.Tensor, graph) -> torch.Tensor:
    """Per-atom rows [A, ...] averaged over each structure's atoms → [B, ...] (CGCNN's mean pooling)."""
    counts = graph.n_atoms.to(per_atom.dtype).reshape(-1, *([1] * (per_atom.dim() - 1)))
    return scatter_sum(per_atom, graph.batch, graph.n_structures) / counts
