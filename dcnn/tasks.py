"""Tasks: what the generic training loop trains on (data, model, loss terms, metrics).

The loop in `dcnn.train` only needs the `Task` protocol below; what a task measures (metric names, units,
baselines, the validation objective) is declared by its family (dcnn/families.py), so the loop, the
trainables and the report read it from there. `PINNTask` (dcnn/pinn/task.py) sits beside `MoleculeTask`.
"""
from __future__ import annotations

import math
from typing import Iterator, Protocol

import numpy as np
import torch
from torch import nn

from dcnn.activations import replace_activations
from dcnn.config import TrainConfig
from dcnn.families import MOLECULE, TaskFamily, family_of
from dcnn.data import MoleculeDataset, load_dataset, split_indices
from dcnn.labels import LabelTransform, baselines
from dcnn.compiled import make_energy_forces
from dcnn.init import INIT_BATCHES, initialise_
from dcnn.models import MAX_Z, build_model, default_activation, denormalize


class Task(Protocol):
    model: nn.Module
    n_train: int
    info: dict
    family: TaskFamily  # metric names (evaluate()'s keys), units, baselines, val_loss weights

    def steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps in one epoch (the learning-rate schedule needs it up front)."""

    def batches(self, generator: torch.Generator, batch_size: int) -> Iterator:
        """The epoch's batches: whatever `loss()` takes as its index; random draws only from `generator`."""

    def objective(self, metrics: dict) -> float:
        """What the plateau schedule watches, from the validation metrics."""

    def test_references(self) -> dict:
        """Constants reported with the test metrics (baselines, scales), by result key."""

    def loss(self, index: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss on the train frames `index` and its terms in physical units (detached)."""

    def evaluate(self, split: str) -> dict[str, float]:
        """Metrics in physical units on 'train', 'val' or 'test'."""


class MoleculeTask:
    """Energy + force training of an interatomic potential: loss = MAE(E') + β·MAE(F') on labels made by
    a `LabelTransform` (per-species shift and/or division by C); metrics on inverse-transformed
    predictions, so every reported number is in the data set's physical units.
    """

    family = MOLECULE

    def __init__(self, config: TrainConfig, device: torch.device, dataset: MoleculeDataset | None = None):
        self.config = config
        self.device = device
        ds = dataset if dataset is not None else load_dataset(config.dataset)
        ds.check_numbers(MAX_Z)
        split_seed = config.split_seed if config.split_seed is not None else 0
        idx = split_indices(len(ds), split_seed, config.n_train, config.n_val, config.n_test)
        dtype = getattr(torch, config.dtype)
        self.force_weight = config.force_weight
        train_energies = ds.energies[idx[0]]
        self.labels = LabelTransform.fit(ds.numbers, train_energies, shift=config.shift,
                                         scale=config.rescale_factor if config.rescale else 1.0)
        self.baselines = {name: baselines(train_energies, ds.energies[i], ds.forces[i])
                          for name, i in zip(("train", "val", "test"), idx)}

        def tensors(index: np.ndarray):
            """(positions, physical E, physical F, label E', label F') of one split, on the device."""
            sub = ds.subset(index)
            t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
            return (t(sub.positions), t(sub.energies), t(sub.forces),
                    t(self.labels.energies(sub.energies)), t(self.labels.forces(sub.forces)))

        self.splits = {name: tensors(i) for name, i in zip(("train", "val", "test"), idx)}
        self.numbers = torch.as_tensor(ds.numbers, device=device)
        self.n_train = len(idx[0])

        data = {"elements": tuple(sorted({int(z) for z in ds.numbers})), "n_atoms": int(ds.n_atoms)}
        model = build_model(config.model, config.preset, data, **config.model_sizes())
        activation = default_activation(config.model) if config.activation == "original" else config.activation
        replaced = 0
        if config.activation != "original":
            replaced = replace_activations(model, config.activation, config.scope).replaced_activations
        removed = denormalize(model) if config.denorm else 0
        self.model = model.to(device=device, dtype=dtype)
        self.init_info = initialise_(self.model, config.init, self._init_forwards(config.seed, config.batch_size))
        # the E+F function is chosen once: eager autograd, or traced + compiled (dcnn/compiled.py)
        self.energy_and_forces = make_energy_forces(
            self.model, config.compile, config.model,
            total_steps=config.epochs * math.ceil(len(idx[0]) / config.batch_size), preset=config.preset)
        self.info = {
            "energy_unit": ds.energy_unit, "force_unit": ds.force_unit, "theory": ds.theory,
            "dataset_name": ds.name, "n_atoms": ds.n_atoms,
            "n_train": len(idx[0]), "n_val": len(idx[1]), "n_test": len(idx[2]),
            "activation_used": activation, "activations_replaced": replaced,
            "batchnorm_removed": removed,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "energy_shift": self.labels.offset,
            "init_layers_scaled": self.init_info.get("lsuv_layers", 0),
            "init_scale_factors_fitted": len(self.init_info.get("fitted_scale_factors", {})),
        }

    def _init_forwards(self, seed: int, batch_size: int) -> list:
        """Forward passes on training batches for the initialisation (dcnn/init.py): a permutation drawn
        from a generator of its own (seeded by the trial seed), so the training order and the global RNG
        are the same whatever `init` is."""
        positions = self.splits["train"][0]
        order = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(seed)).to(self.device)
        batches = [order[k:k + batch_size] for k in range(0, self.n_train, batch_size)][:INIT_BATCHES]
        return [lambda index=index: self.model(positions[index], self.numbers) for index in batches]

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.n_train / batch_size)

    def batches(self, generator: torch.Generator, batch_size: int):
        """A random permutation of the training frames in batches (drawn on the CPU: same on any device)."""
        perm = torch.randperm(self.n_train, generator=generator).to(self.device)
        for start in range(0, self.n_train, batch_size):
            yield perm[start:start + batch_size]

    def objective(self, metrics: dict) -> float:
        """The validation objective with the run's own force weight (physical units)."""
        return metrics["energy_loss"] + self.force_weight * metrics["force_loss"]

    def test_references(self) -> dict:
        base = self.baselines.get("test", {})
        return {"test_energy_baseline": base.get("energy", math.nan), "test_force_baseline": base.get("force", math.nan),
                "test_energy_scale": base.get("energy_scale", math.nan)}

    def compile_stats(self) -> dict:
        """Compile time so far (s), whether training steps run compiled (1/0), and why not if it fell back."""
        ef = self.energy_and_forces
        auto = getattr(ef, "auto", None)
        compiled = hasattr(ef, "graphs") and ef.failed is None and (auto is None or auto.decision is True)
        out = {"compile_s": float(getattr(ef, "compile_time_s", 0.0)), "compiled": int(compiled)}
        if getattr(ef, "warm_cache", None) is not None:  # compiled a graph this machine had compiled before
            out["compile_warm_cache"] = int(ef.warm_cache)
        if getattr(ef, "failed", None):
            out["compile_fallback"] = ef.failed
        return out

    def loss(self, index):
        pos, energy, forces, e_label, f_label = self.splits["train"]
        e_pred, f_pred = self.energy_and_forces(pos[index], self.numbers, create_graph=True)
        loss = (e_pred - e_label[index]).abs().mean() + self.force_weight * (f_pred - f_label[index]).abs().mean()
        with torch.no_grad():  # the same terms in physical units, for the record
            e_mae = (self.labels.inverse_energies(e_pred) - energy[index]).abs().mean()
            f_mae = (self.labels.inverse_forces(f_pred) - forces[index]).abs().mean()
        return loss, {"train_energy_loss": e_mae, "train_force_loss": f_mae}

    def evaluate(self, split: str) -> dict[str, float]:
        pos, energy, forces, _, _ = self.splits[split]
        n = pos.shape[0]
        if n == 0:
            return {"energy_loss": math.nan, "force_loss": math.nan}
        was_training = self.model.training
        self.model.eval()
        e_abs = torch.zeros((), dtype=pos.dtype, device=pos.device)
        f_abs = torch.zeros_like(e_abs)
        for start in range(0, n, self.config.eval_batch_size):
            sl = slice(start, start + self.config.eval_batch_size)
            e_pred, f_pred = self.energy_and_forces(pos[sl], self.numbers, create_graph=False)
            e_abs += (self.labels.inverse_energies(e_pred.detach()) - energy[sl]).abs().sum()
            f_abs += (self.labels.inverse_forces(f_pred.detach()) - forces[sl]).abs().sum()
        self.model.train(was_training)
        return {"energy_loss": float(e_abs) / n, "force_loss": float(f_abs) / forces.numel()}


def make_task(config: TrainConfig, device: torch.device) -> Task:
    if family_of(config.model).name == "pinn":
        from dcnn.pinn.task import PINNTask

        return PINNTask(config, device)
    return MoleculeTask(config, device)
