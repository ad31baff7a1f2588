"""CGCNN (Xie & Grossman 2018) as in the OCP code the paper used: gated edge convolution with
BatchNorm1d on the message and LayerNorm on the aggregate, softplus, mean pooling, dense head.

It is here so that denormalization (deleting BatchNorm) means something.  On the graph layout
(dcnn.atomistic.graph.AtomicGraph): a complete graph for fixed-size molecules, a radius graph at the cutoff
for periodic or variable-size data; messages are switched off smoothly past the cutoff so forces stay
conservative.  The edge terms that depend only on the distance (the Gaussian basis and its Linear block)
are evaluated once per *pair* and broadcast over both directions (the graph's edges come paired: edge m
and m + P are reverses); the atom terms are evaluated once per atom and gathered per edge, and the
messages are scattered back to their targets with index_add.  No Python loops over atoms or edges.
"""
from __future__ import annotations

import torch
from torch import nn

from dcnn.activations import get_activation
from dcnn.atomistic.graph import AtomicGraph
from dcnn.models.common import GaussianSmearing, cosine_cutoff, mean_per_structure, pair_distances, sum_per_structure

CGCNN_PRESETS = {
    "small": dict(embedding=64, convs=3, fc=64, fc_layers=3, gaussians=50, cutoff=6.0, readout="mean"),
    "paper": dict(embedding=512, convs=3, fc=128, fc_layers=3, gaussians=100, cutoff=6.0, readout="mean"),
}
READOUTS = ("mean", "sum")


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics come only from the rows `weight` marks (edges inside the
    cutoff).  OCP's CGCNN normalizes the edges of its radius graph; a complete graph (fixed-size molecules)
    also holds the pairs beyond the cutoff, whose messages are switched off but whose pre-activations would
    otherwise shift the batch mean and variance (the energy would then depend on atoms beyond the cutoff).
    On a radius graph at the cutoff every edge is marked, and this is plain BatchNorm1d."""

    @staticmethod
    def batch_statistics(x: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, biased variance, count) over the rows `weight` marks; shared with `dcnn.compiled`,
        which updates the running statistics outside its traced step."""
        w = weight.reshape(-1, 1).to(x.dtype)
        count = w.sum().clamp(min=1.0)
        mean = (x * w).sum(0) / count
        var = ((x - mean) ** 2 * w).sum(0) / count
        return mean, var, count

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        if weight is None or not self.training:
            return super().forward(x)
        mean, var, count = self.batch_statistics(x, weight)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * (count / (count - 1).clamp(min=1.0))
                self.running_mean.mul_(1 - m).add_(m * mean)
                self.running_var.mul_(1 - m).add_(m * unbiased)
        out = (x - mean) * torch.rsqrt(var + self.eps)
        return out * self.weight + self.bias if self.affine else out


class CGConv(nn.Module):
    """v_i ← softplus(v_i + LN(Σ_j σ(z_f) ⊙ softplus(z_s))), z = BN(W[v_i ‖ v_j ‖ e_ij] + b)."""

    def __init__(self, dim: int, edge_dim: int, activation: str = "softplus"):
        super().__init__()
        self.dim = dim
        self.core_act = get_activation(activation)  # modules, so scope="all" can swap them
        self.act = get_activation(activation)
        self.lin_i = nn.Linear(dim, 2 * dim)  # the [v_i ‖ v_j ‖ e_ij] matmul, split by block
        self.lin_j = nn.Linear(dim, 2 * dim, bias=False)
        self.lin_e = nn.Linear(edge_dim, 2 * dim, bias=False)
        self.bn = MaskedBatchNorm1d(2 * dim)
        self.ln = nn.LayerNorm(dim)

    def forward(self, v: torch.Tensor, rbf: torch.Tensor, env: torch.Tensor, inside: torch.Tensor,
                source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """v [A, D]; rbf [P, G] and env [P, 1] of the pairs; inside [2P] bool (edges within the cutoff, the
        BatchNorm's rows); source/target [2P] (paired edges: forward directions, then their reverses)."""
        p, d = env.shape[0], self.dim
        z_atoms = self.lin_i(v).index_select(0, target) + self.lin_j(v).index_select(0, source)  # [2P, 2D]
        z = (z_atoms.view(2, p, 2 * d) + self.lin_e(rbf)).view(2 * p, 2 * d)  # e_ij = e_ji: once per pair
        if isinstance(self.bn, MaskedBatchNorm1d):  # statistics over edges inside the cutoff only
            z = self.bn(z, inside)
        else:  # denormalized: Identity
            z = self.bn(z)
        gate, core = z.chunk(2, dim=-1)
        msg = (torch.sigmoid(gate) * self.core_act(core)).view(2, p, d) * env  # envelope of each pair
        agg = torch.zeros_like(v).index_add(0, target, msg.view(2 * p, d))  # Σ_j over the edges into i
        return self.act(v + self.ln(agg))


class CGCNN(nn.Module):
    """Energy model E(graph) → [B].

    `readout` is how the atoms' features become a structure's energy:

    * "mean" (the default; the paper's, OCP's CGCNN): the head on the mean of each structure's atom
      features, E = head(⟨v⟩).  Intensive: a 2×1×1 supercell has the same energy as its cell.  Right for
      one fixed-size molecule (the mean only rescales), wrong for total energies of structures of
      different sizes.
    * "sum": the head on every atom, summed, E = Σ_i head(v_i) (per-atom energies, as SchNet's readout).
      Extensive: for mixed-size data (slabs with adsorbates, crystals of several sizes) whose labels are
      total energies.  Not head(Σ_i v_i): the head is non-linear, so that would be neither.
    Both use the same parameters (a constructor argument, not a size: it changes the function, not the
    shapes, so a checkpoint loads into either)."""

    paper_activation_scope = ("head",)  # the paper swaps activations only in the dense head
    task_args = ("max_z",)  # the element-embedding size (dcnn.models.MAX_Z): not a size a study varies
    size_choices = {"readout": READOUTS}

    def __init__(self, embedding=64, convs=3, fc=64, fc_layers=3, gaussians=50, cutoff=6.0,
                 activation="softplus", max_z=100, readout: str = "mean"):
        super().__init__()
        if readout not in READOUTS:
            raise ValueError(f"CGCNN readout must be one of {READOUTS}, got {readout!r}")
        self.cutoff = cutoff
        self.readout = readout
        self.embedding = nn.Embedding(max_z, embedding)
        self.rbf = GaussianSmearing(0.0, cutoff, gaussians)
        self.convs = nn.ModuleList(CGConv(embedding, gaussians, activation) for _ in range(convs))
        layers: list[nn.Module] = [nn.Linear(embedding, fc), get_activation(activation)]
        for _ in range(fc_layers - 1):
            layers += [nn.Linear(fc, fc), get_activation(activation)]
        layers.append(nn.Linear(fc, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, graph: AtomicGraph) -> torch.Tensor:
        """graph (positions Å) → energies [B]."""
        source, target = graph.edge_index
        d = pair_distances(graph)  # [P]
        rbf = self.rbf(d)
        env = cosine_cutoff(d, self.cutoff).unsqueeze(-1)  # [P, 1]
        inside = (env > 0).view(-1).repeat(2)  # [2P]: both directions of a pair inside the cutoff
        v = self.embedding(graph.numbers)
        for conv in self.convs:
            v = conv(v, rbf, env, inside, source, target)
        if self.readout == "mean":
            return self.head(mean_per_structure(v, graph)).squeeze(-1)
        return sum_per_structure(self.head(v).squeeze(-1), graph)
