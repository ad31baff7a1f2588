"""CGCNN (Xie & Grossman 2018) as in the OCP code the paper used: gated edge convolution with
BatchNorm1d on the message and LayerNorm on the aggregate, softplus, mean pooling, dense head.

It is here so that denormalization (deleting BatchNorm) means something.  Dense all-pairs layout for
fixed-size molecules; messages are switched off smoothly past the cutoff so forces stay conservative.
"""
from __future__ import annotations

import torch
from torch import nn

from dcnn.activations import get_activation
from legacy_dense.common import GaussianSmearing, PairGeometry, cosine_cutoff

CGCNN_PRESETS = {
    "small": dict(embedding=64, convs=3, fc=64, fc_layers=3, gaussians=50, cutoff=6.0),
    "paper": dict(embedding=512, convs=3, fc=128, fc_layers=3, gaussians=100, cutoff=6.0),
}


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics come only from the rows `weight` marks (pairs inside the
    cutoff).  OCP's CGCNN normalizes the edges of its radius graph; our dense all-pairs layout also holds
    the pairs beyond the cutoff, whose messages are switched off but whose pre-activations would otherwise
    shift the batch mean and variance (the energy would then depend on atoms beyond the cutoff)."""

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

    def forward(self, v: torch.Tensor, e_directed: torch.Tensor, env: torch.Tensor,
                offdiag: torch.Tensor) -> torch.Tensor:
        """v [B,N,D]; e_directed [B, N(N−1), G]; env [B, N(N−1), 1]; offdiag: ordered-pair positions."""
        b, n, d = v.shape
        z = (self.lin_i(v).unsqueeze(2) + self.lin_j(v).unsqueeze(1)).view(b, n * n, 2 * d)
        z = z[:, offdiag] + self.lin_e(e_directed)
        if isinstance(self.bn, MaskedBatchNorm1d):  # statistics over pairs inside the cutoff only
            z = self.bn(z.view(-1, 2 * d), (env > 0).view(-1)).view(b, -1, 2 * d)
        else:  # denormalized: Identity
            z = self.bn(z.view(-1, 2 * d)).view(b, -1, 2 * d)
        gate, core = z.chunk(2, dim=-1)
        msg = torch.sigmoid(gate) * self.core_act(core) * env
        agg = msg.view(b, n, n - 1, d).sum(2)
        return self.act(v + self.ln(agg))


class CGCNN(nn.Module):
    paper_activation_scope = ("head",)  # the paper swaps activations only in the dense head

    def __init__(self, embedding=64, convs=3, fc=64, fc_layers=3, gaussians=50, cutoff=6.0,
                 activation="softplus", max_z=100):
        super().__init__()
        self.cutoff = cutoff
        self.embedding = nn.Embedding(max_z, embedding)
        self.geometry = PairGeometry()
        self.rbf = GaussianSmearing(0.0, cutoff, gaussians)
        self.convs = nn.ModuleList(CGConv(embedding, gaussians, activation) for _ in range(convs))
        layers: list[nn.Module] = [nn.Linear(embedding, fc), get_activation(activation)]
        for _ in range(fc_layers - 1):
            layers += [nn.Linear(fc, fc), get_activation(activation)]
        layers.append(nn.Linear(fc, 1))
        self.head = nn.Sequential(*layers)

    def forward(self, positions: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        b, n, _ = positions.shape
        _, _, _, offdiag = self.geometry.tables(n, positions.device)
        _, _, pair_of = self.geometry.directed(n, positions.device)  # ordered pair -> unordered pair
        d = self.geometry.distances(positions)  # [B, P]
        d_dir = d[:, pair_of]
        e = self.rbf(d_dir)
        env = cosine_cutoff(d_dir, self.cutoff).unsqueeze(-1)
        v = self.embedding(numbers).expand(b, n, -1)
        for conv in self.convs:
            v = conv(v, e, env, offdiag)
        return self.head(v.mean(1)).squeeze(-1)
