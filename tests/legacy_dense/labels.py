"""(Frozen reference: the molecule-only label transform that dcnn.atomistic.labels.AtomsLabelTransform replaced; tests check the new one equals it on one molecule.)

Label preprocessing as one invertible transform (as SchNetPack does): an optional per-species energy
shift, then division by the label-rescaling constant C.

    train label  E' = (E − Σ_i e_{Z_i}) / C,   F' = F / C
    prediction   E  = C·E' + Σ_i e_{Z_i},      F  = C·F'

Positions are untouched, so F' = −∂E'/∂x stays consistent.  The shift (per-element reference energies
e_Z, least squares on the training split only) is what SchNetPack/NequIP/MACE call atomic reference
energies; label rescaling (the paper's LR) is the division by C.  Every metric is computed on `inverse`
predictions, so it is in the data set's units whatever the transform is.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def fit_atomic_energies(numbers: np.ndarray, energies: np.ndarray) -> dict[int, float]:
    """Per-element reference energies e_Z by least squares of E ≈ Σ_i e_{Z_i} over the given frames.

    `numbers` is [N] (one molecule: every frame has the same composition) or [n, N].  With a single
    composition the system is rank one: lstsq returns the minimum-norm solution, whose sum over the
    molecule is exactly the mean energy (the usual "mean shift"); with several compositions it is the
    real per-element fit.
    """
    energies = np.asarray(energies, dtype=np.float64)
    numbers = np.asarray(numbers)
    if numbers.ndim == 1:
        numbers = np.broadcast_to(numbers, (len(energies), numbers.shape[0]))
    species = np.unique(numbers)
    counts = (numbers[..., None] == species).sum(axis=1).astype(np.float64)  # [n, S]
    coef, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return {int(z): float(c) for z, c in zip(species, coef)}


@dataclass
class LabelTransform:
    """The transform of one molecule's labels (a data set holds one molecule: one composition)."""

    scale: float = 1.0  # C (1 = no label rescaling)
    atomic_energies: dict = field(default_factory=dict)  # e_Z (empty = no shift)
    offset: float = 0.0  # Σ_i e_{Z_i} over the molecule's atoms, computed once (not per step)

    @classmethod
    def fit(cls, numbers: np.ndarray, train_energies: np.ndarray, shift: bool, scale: float) -> "LabelTransform":
        refs = fit_atomic_energies(numbers, train_energies) if shift else {}
        offset = float(sum(refs.get(int(z), 0.0) for z in np.asarray(numbers).ravel()))
        return cls(scale=float(scale), atomic_energies=refs, offset=offset)

    def energies(self, energies):
        """Physical energies → training labels."""
        return (energies - self.offset) / self.scale

    def forces(self, forces):
        return forces / self.scale

    def inverse_energies(self, energies):
        """Model outputs → energies in the data set's units."""
        return energies * self.scale + self.offset

    def inverse_forces(self, forces):
        return forces * self.scale

    def to_dict(self) -> dict:
        return {"scale": self.scale, "offset": self.offset,
                "atomic_energies": {str(k): v for k, v in self.atomic_energies.items()}}


def baselines(train_energies: np.ndarray, energies: np.ndarray, forces: np.ndarray) -> dict[str, float]:
    """What a model must beat: MAE of predicting the training-set mean energy, and of predicting zero
    force; plus `energy_scale` = mean |E| (the error of predicting zero energy, a blow-up yardstick)."""
    if len(energies) == 0:
        return {"energy": float("nan"), "force": float("nan"), "energy_scale": float("nan")}
    return {"energy": float(np.abs(energies - np.mean(train_energies)).mean()),
            "force": float(np.abs(forces).mean()), "energy_scale": float(np.abs(energies).mean())}


__all__ = ["LabelTransform", "fit_atomic_energies", "baselines"]
