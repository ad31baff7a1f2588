"""Label preprocessing for data sets of many compositions: per-species reference energies fitted over
compositions, then division by the label-rescaling constant C, as one invertible transform.

    train label  E' = (E − Σ_S c_kS e_S) / C,   F' = F / C
    prediction   E  = C·E' + Σ_S c_kS e_S,      F  = C·F'

c_kS = atoms of species S in frame k (`AtomsDataset.compositions()`).  e_S is the least-squares fit of
counts · e ≈ E on the training split only (SchNetPack's/MACE's atomic reference energies).  With several
compositions it is the real per-element fit; with one composition (a molecule data set) the system has
rank one and the fitted offset Σ c_S e_S is exactly the mean energy — what the molecule-only transform did (kept as a reference in tests/legacy_dense/labels.py).  A
species absent from the training split (an out-of-distribution split that holds an element out) gets
e_S = 0 and is listed in `unfitted_species`.  Positions are untouched, so F' = −∂E'/∂x stays consistent.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["fit_species_energies", "AtomsLabelTransform", "baselines"]


def fit_species_energies(counts: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """e [S] minimising |counts · e − E|², counts [n, S], E [n].

    Rank deficient (one composition, or proportional ones): the fitted offsets counts · e are the same for
    every least-squares solution; the one returned is the minimum-norm deviation from the mean per-atom
    energy (so every species gets a plausible value).  A species with no atoms in `counts` gets 0."""
    counts = np.asarray(counts, dtype=np.float64)
    energies = np.asarray(energies, dtype=np.float64)
    if counts.ndim != 2 or counts.shape[0] != energies.shape[0]:
        raise ValueError(f"counts must be [frames, species] for {energies.shape[0]} energies, got {counts.shape}")
    if counts.shape[0] == 0:
        raise ValueError("no training frames to fit reference energies on")
    # centre on the mean per-atom energy first: absolute energies (−1e5 kcal/mol) would otherwise cost
    # lstsq digits, and the minimum-norm solution of a rank-one system is unchanged by the shift
    per_atom = energies.sum() / counts.sum()
    present = counts.sum(axis=0) > 0
    coef = np.zeros(counts.shape[1])
    sol, *_ = np.linalg.lstsq(counts[:, present], energies - counts[:, present].sum(1) * per_atom, rcond=None)
    coef[present] = sol + per_atom
    return coef


def _matmul(counts, energies_per_species, like):
    """counts [n, S] · e [S] in numpy or torch (on `like`'s device and dtype)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(like, torch.Tensor):
        c = torch.as_tensor(counts, device=like.device, dtype=like.dtype)
        return c @ torch.as_tensor(energies_per_species, device=like.device, dtype=like.dtype)
    return np.asarray(counts, dtype=np.float64) @ energies_per_species


@dataclass
class AtomsLabelTransform:
    """E' = (E − counts·e) / C and F' = F / C, and back.  `species` [S] are the atomic numbers of the
    counts' columns (fit on the whole data set's `compositions()` so every split uses the same columns)."""

    scale: float = 1.0  # C (1 = no label rescaling)
    species: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    species_energies: np.ndarray = field(default_factory=lambda: np.zeros(0))  # e_S (zeros = no shift)
    unfitted_species: tuple[int, ...] = ()

    @classmethod
    def fit(cls, species: np.ndarray, train_counts: np.ndarray, train_energies: np.ndarray, shift: bool,
            scale: float) -> "AtomsLabelTransform":
        species = np.asarray(species, dtype=np.int64)
        train_counts = np.asarray(train_counts)
        if train_counts.shape[1:] != species.shape:
            raise ValueError(f"counts have {train_counts.shape[1:]} columns for {len(species)} species")
        unfitted = tuple(int(z) for z in species[train_counts.sum(axis=0) == 0])
        e = fit_species_energies(train_counts, train_energies) if shift else np.zeros(len(species))
        if not float(scale) > 0:
            raise ValueError(f"label scale C must be positive, got {scale!r}")
        return cls(float(scale), species, e, unfitted if shift else ())

    def offsets(self, counts):
        """Σ_S c_kS e_S for every frame, [n] (numpy, or torch like `counts`)."""
        return _matmul(counts, self.species_energies, counts)

    def energies(self, energies, counts):
        """Physical energies [n] → training labels."""
        return (energies - _matmul(counts, self.species_energies, energies)) / self.scale

    def forces(self, forces):
        return forces / self.scale

    def inverse_energies(self, energies, counts):
        """Model outputs [n] → energies in the data set's units."""
        return energies * self.scale + _matmul(counts, self.species_energies, energies)

    def inverse_forces(self, forces):
        return forces * self.scale

    def to_dict(self) -> dict:
        return {"scale": self.scale,
                "atomic_energies": {str(int(z)): float(e) for z, e in zip(self.species, self.species_energies)},
                "unfitted_species": list(self.unfitted_species)}

    @classmethod
    def from_dict(cls, d: dict) -> "AtomsLabelTransform":
        refs = d.get("atomic_energies", {})
        species = np.array(sorted(int(z) for z in refs), dtype=np.int64)
        return cls(float(d.get("scale", 1.0)), species, np.array([float(refs[str(z)]) for z in species]),
                   tuple(int(z) for z in d.get("unfitted_species", ())))


def baselines(train_energies: np.ndarray, train_n_atoms: np.ndarray, energies: np.ndarray, n_atoms: np.ndarray,
              forces: np.ndarray, train_counts: np.ndarray | None = None,
              counts: np.ndarray | None = None) -> dict[str, float]:
    """What a model must beat on one split (energies [n], n_atoms [n], forces [A, 3]):

    - `energy`: MAE per structure of predicting the training mean energy;
    - `energy_per_atom`: mean |E/N − mean_train(E/N)|, the per-atom MAE of predicting N × the training
      mean per-atom energy (the sensible constant for frames of different sizes);
    - `force`: MAE per component of predicting zero force;
    - `energy_scale`: mean |E| (the error of predicting zero energy: the blow-up yardstick);
    - with counts: `energy_composition`, `energy_composition_per_atom`: the errors of the least-squares
      per-species fit itself (train split), what the shift leaves for a model to learn.
    """
    nan = float("nan")
    energies = np.asarray(energies, dtype=np.float64)
    if len(energies) == 0:
        out = {"energy": nan, "energy_per_atom": nan, "force": nan, "energy_scale": nan}
        if counts is not None:
            out.update(energy_composition=nan, energy_composition_per_atom=nan)
        return out
    train_energies = np.asarray(train_energies, dtype=np.float64)
    n_atoms = np.asarray(n_atoms, dtype=np.float64)
    per_atom_mean = np.mean(train_energies / np.asarray(train_n_atoms, dtype=np.float64))
    out = {"energy": float(np.abs(energies - train_energies.mean()).mean()),
           "energy_per_atom": float(np.abs(energies / n_atoms - per_atom_mean).mean()),
           "force": float(np.abs(forces).mean()) if np.size(forces) else nan,
           "energy_scale": float(np.abs(energies).mean())}
    if counts is not None and train_counts is not None:
        residual = energies - np.asarray(counts, dtype=np.float64) @ fit_species_energies(train_counts, train_energies)
        out["energy_composition"] = float(np.abs(residual).mean())
        out["energy_composition_per_atom"] = float(np.abs(residual / n_atoms).mean())
    return out
