"""Errors of predicted energies and forces on frames of different sizes, and OC20/OC22's EFwT.

- energy MAE per structure: mean_k |ΔE_k|; per atom: mean_k |ΔE_k| / N_k (the OC and MACE convention;
  the per-structure number grows with system size, so mixed-size sets need both);
- force MAE per component: mean over atoms and x, y, z of |ΔF| (the paper's and OC's);
- EFwT (energy and forces within threshold, OC20): the fraction of structures with |ΔE| ≤ 0.02 eV and
  max over atoms and components |ΔF| ≤ 0.03 eV/Å.  Its thresholds are in eV: for a data set in other
  units it is NaN with a note saying so, never silently converted.
`free` masks (OC's fixed bottom layers excluded) restrict the force terms; a structure without free atoms
passes the force criterion.  Inputs are numpy arrays (or anything `np.asarray` takes) in physical units.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["EFWT_ENERGY_EV", "EFWT_FORCE_EV_PER_A", "energy_mae", "energy_mae_per_atom", "force_mae", "efwt",
           "atomistic_metrics"]

EFWT_ENERGY_EV = 0.02
EFWT_FORCE_EV_PER_A = 0.03
EFWT_UNITS_NOTE = "EFwT is defined in eV (|ΔE| ≤ 0.02 eV, max |ΔF| ≤ 0.03 eV/Å): NaN for a data set in {unit}"


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def energy_mae(pred, true) -> float:
    """mean_k |E_pred − E_true| over structures."""
    d = np.abs(_np(pred) - _np(true))
    return float(d.mean()) if d.size else float("nan")


def energy_mae_per_atom(pred, true, n_atoms) -> float:
    """mean_k |E_pred − E_true| / N_k."""
    d = np.abs(_np(pred) - _np(true)) / _np(n_atoms)
    return float(d.mean()) if d.size else float("nan")


def force_mae(pred, true, free=None) -> float:
    """Mean |ΔF| over components of the (free) atoms, forces [A, 3]."""
    d = np.abs(_np(pred) - _np(true))
    if free is not None:
        d = d[np.asarray(free, dtype=bool)]
    return float(d.mean()) if d.size else float("nan")


def _max_force_error(pred, true, n_atoms, free=None) -> np.ndarray:
    """[n] max over a structure's (free) atoms and components of |ΔF| (0 when it has none)."""
    d = np.abs(_np(pred) - _np(true)).max(axis=1) if len(_np(true)) else np.zeros(0)
    if free is not None:
        d = np.where(np.asarray(free, dtype=bool), d, 0.0)
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(n_atoms)[:-1]]).astype(np.int64)
    return np.maximum.reduceat(d, starts) if len(d) else np.zeros(len(n_atoms))


def efwt(pred_energies, true_energies, pred_forces, true_forces, n_atoms, energy_unit: str, free=None,
         energy_threshold: float = EFWT_ENERGY_EV, force_threshold: float = EFWT_FORCE_EV_PER_A) -> float:
    """Fraction of structures whose energy and every force component are within OC20's thresholds (eV,
    eV/Å); NaN with a warning for a data set in any other unit."""
    if energy_unit != "eV":
        warnings.warn(EFWT_UNITS_NOTE.format(unit=energy_unit), stacklevel=2)
        return float("nan")
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    if len(n_atoms) == 0:
        return float("nan")
    if np.any(n_atoms <= 0):
        raise ValueError("every structure needs at least one atom")
    energy_ok = np.abs(_np(pred_energies) - _np(true_energies)) <= energy_threshold
    force_ok = _max_force_error(pred_forces, true_forces, n_atoms, free) <= force_threshold
    return float(np.mean(energy_ok & force_ok))


def atomistic_metrics(pred_energies, true_energies, pred_forces, true_forces, n_atoms, energy_unit: str,
                      free=None) -> dict:
    """Every metric above in one dict: energy, energy_per_atom, force, efwt (+ efwt_note when NaN)."""
    out = {"energy": energy_mae(pred_energies, true_energies),
           "energy_per_atom": energy_mae_per_atom(pred_energies, true_energies, n_atoms),
           "force": force_mae(pred_forces, true_forces, free)}
    if energy_unit != "eV":
        out["efwt"] = float("nan")
        out["efwt_note"] = EFWT_UNITS_NOTE.format(unit=energy_unit)
    else:
        out["efwt"] = efwt(pred_energies, true_energies, pred_forces, true_forces, n_atoms, energy_unit, free)
    return out
