"""Training batches for the benchmarks, cut exactly as the trainer cuts them: the data set on the device as a
`GraphStore` (complete graphs for one molecule, radius graphs with periodic images otherwise), labels
divided by C = 1e4 as label rescaling does, the same seeded batch indices for every implementation."""
from __future__ import annotations

import numpy as np
import torch

from dcnn.atomistic.graph import GraphStore
from dcnn.atomistic.io import load_atoms
from dcnn.atomistic.task import neighbors_for
from dcnn.models import prepare

BATCH = 20
C = 1e4


class TrainingBatches:
    """`n_batches` seeded batches of `BATCH` frames of `dataset` for `model` (its cutoff sets the graph)."""

    def __init__(self, model: torch.nn.Module, dataset: str, n_batches: int, device: torch.device,
                 dtype: torch.dtype = torch.float32, seed: int = 0):
        self.dataset = ds = load_atoms(dataset)
        self.model = model
        self.store = GraphStore(ds, neighbors_for(ds, model), device, dtype, ds.energies / C, ds.forces / C,
                                np.zeros((len(ds), 1)))
        rng = np.random.default_rng(seed)
        self.index = [np.sort(rng.choice(len(ds), BATCH, replace=False)) for _ in range(n_batches)]
        self.device = device

    def __call__(self, i: int) -> dict:
        """Batch i: {"graph" (prepared for the model), "energy_labels", "force_labels", "host_index", ...}."""
        host = self.index[i]
        b = self.store.batch(torch.as_tensor(host, device=self.device), host)
        b["graph"] = prepare(self.model, b["graph"])
        b["host_index"] = host
        return b

    def dense(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch i as the dense layout had it, (positions [B, N, 3], numbers [N]): one molecule's data only."""
        if not self.dataset.fixed_size:
            raise ValueError(f"{self.dataset.name}: frames of different sizes have no dense layout")
        n = int(self.dataset.n_atoms[0])
        b = self(i)
        return b["graph"].positions.reshape(-1, n, 3), b["graph"].numbers[:n]
