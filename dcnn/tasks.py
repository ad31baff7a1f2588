"""Tasks: what the generic training loop trains on (data, model, loss terms, metrics).

The loop in `dcnn.train` only needs `model`, `n_train`, `loss(index)` and `evaluate(split)`; a
physics-informed (PDE-residual) task can plug in beside `MoleculeTask` without touching the loop,
the trainables or the orchestrator.
"""
from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from torch import nn

from dcnn.activations import replace_activations
from dcnn.config import TrainConfig
from dcnn.data import MoleculeDataset, load_dataset, split_indices
from dcnn.models import build_model, default_activation, denormalize, energy_and_forces


class Task(Protocol):
    model: nn.Module
    n_train: int
    info: dict

    def loss(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss on the train frames `index` and its terms in physical units (detached)."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics in physical units on 'train', 'val' or 'test'."""


class MoleculeTask:
    """Energy + force training of an interatomic potential: loss = MAE(E) + β·MAE(F).

    With label rescaling, labels are divided by C for training and predictions multiplied back before
    any metric, so every reported number is in the data set's physical units.
    """

    def __init__(self, config: TrainConfig, device: torch.device, dataset: MoleculeDataset | None = None):
        self.config = config
        ds = dataset if dataset is not None else load_dataset(config.dataset)
        split_seed = config.split_seed if config.split_seed is not None else 0
        idx = split_indices(len(ds), split_seed, config.n_train, config.n_val, config.n_test)
        dtype = getattr(torch, config.dtype)
        self.scale = config.rescale_factor if config.rescale else 1.0
        self.force_weight = config.force_weight

        def tensors(index: np.ndarray):
            sub = ds.subset(index)
            return (torch.as_tensor(sub.positions, dtype=dtype, device=device),
                    torch.as_tensor(sub.energies / self.scale, dtype=dtype, device=device),
                    torch.as_tensor(sub.forces / self.scale, dtype=dtype, device=device))

        self.splits = {name: tensors(i) for name, i in zip(("train", "val", "test"), idx)}
        self.numbers = torch.as_tensor(ds.numbers, device=device)
        self.n_train = len(idx[0])

        model = build_model(config.model, config.preset, **config.model_sizes())
        activation = default_activation(config.model) if config.activation == "original" else config.activation
        replaced = 0
        if config.activation != "original":
            replaced = replace_activations(model, config.activation, config.scope).replaced_activations
        removed = denormalize(model) if config.denorm else 0
        self.model = model.to(device=device, dtype=dtype)
        self.info = {
            "energy_unit": ds.energy_unit, "force_unit": ds.force_unit, "theory": ds.theory,
            "dataset_name": ds.name, "n_atoms": ds.n_atoms,
            "n_train": len(idx[0]), "n_val": len(idx[1]), "n_test": len(idx[2]),
            "activation_used": activation, "activations_replaced": replaced,
            "batchnorm_removed": removed,
            "n_parameters": sum(p.numel() for p in model.parameters()),
        }

    def loss(self, index):
        pos, energy, forces = self.splits["train"]
        e_pred, f_pred = energy_and_forces(self.model, pos[index], self.numbers, create_graph=True)
        e_mae = (e_pred - energy[index]).abs().mean()
        f_mae = (f_pred - forces[index]).abs().mean()
        loss = e_mae + self.force_weight * f_mae
        return loss, {"train_energy_loss": e_mae.detach() * self.scale,
                      "train_force_loss": f_mae.detach() * self.scale}

    def evaluate(self, split: str) -> dict[str, float]:
        pos, energy, forces = self.splits[split]
        n = pos.shape[0]
        if n == 0:
            return {"energy_loss": math.nan, "force_loss": math.nan}
        was_training = self.model.training
        self.model.eval()
        e_abs = torch.zeros((), dtype=pos.dtype, device=pos.device)
        f_abs = torch.zeros_like(e_abs)
        for start in range(0, n, self.config.eval_batch_size):
            sl = slice(start, start + self.config.eval_batch_size)
            e_pred, f_pred = energy_and_forces(self.model, pos[sl], self.numbers, create_graph=False)
            e_abs += (e_pred.detach() - energy[sl]).abs().sum()
            f_abs += (f_pred.detach() - forces[sl]).abs().sum()
        self.model.train(was_training)
        return {"energy_loss": float(e_abs) * self.scale / n,
                "force_loss": float(f_abs) * self.scale / forces[:n].numel()}


def make_task(config: TrainConfig, device: torch.device) -> Task:
    return MoleculeTask(config, device)
