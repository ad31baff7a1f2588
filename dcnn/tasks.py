"""Tasks: what the generic training loop trains on (data, model, loss terms, metrics).

The loop in `dcnn.train` only needs the `Task` protocol below; what a task measures (metric names, units,
baselines, the validation objective) is declared by its family (the types: dcnn/families.py), so the loop,
the trainables and the report read it from there.  The tasks themselves: `dcnn.atomistic.task.AtomisticTask`
(interatomic potentials on any atomistic data) and `dcnn.pinn.task.PINNTask`; `dcnn.registry.make_task`
builds the one a config's model trains.
"""
from __future__ import annotations

from typing import Iterator, Protocol

import torch
from torch import nn

from dcnn.families import TaskFamily


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
