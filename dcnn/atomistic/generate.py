"""Generate the bundled periodic catalysis-like data set offline: adsorbates on fcc(111) slabs, Langevin MD
with ASE's EMT calculator (no downloads, no DFT).

What it stands in for: the paper's OC22 setting needs frames of different sizes, metals and adsorbates,
periodic in x and y with vacuum along z and a fixed bottom layer.  EMT (Jacobsen et al.) covers Cu, Pt and
Ni with crude H, C, N, O parameters, and runs ≈ 5 ms a step for 30 atoms here: enough to exercise
variable-size, multi-composition, periodic training end to end.  EMT is not the DFT of OC22: errors on this
set are not comparable with published OC20/OC22 numbers.

Reproducible bit for bit on one stack: every system's MD draws from its own generator seeded with
(seed, system index), EMT is plain numpy, and the file is written with fixed zip timestamps.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcnn.atomistic.dataset import AtomsDataset, offsets_from_counts
from dcnn.atomistic.io import save_atoms_npz
from dcnn.outputs import check_output

__all__ = ["CatalysisSystem", "CATALYSIS_SYSTEMS", "build_system", "generate_catalysis", "theory_label"]


@dataclass(frozen=True)
class CatalysisSystem:
    """One slab: metal, `fcc111` size (x, y, layers) and adsorbates, placed on fcc hollow sites (the second
    one unit cell further along both surface vectors, ≥ 4.4 Å from the first)."""

    metal: str
    size: tuple[int, int, int]
    adsorbates: tuple[str, ...]

    @property
    def formula(self) -> str:
        return build_system(self).get_chemical_formula(mode="hill")


_SMALL, _LARGE = (2, 2, 3), (3, 3, 3)
# every metal with every adsorbate element; C only with O (3 systems), so holding out C, N, a metal or an
# adsorbate element leaves most of the data to train on
CATALYSIS_SYSTEMS: tuple[CatalysisSystem, ...] = tuple(
    CatalysisSystem(metal, size, ads)
    for metal in ("Cu", "Pt", "Ni")
    for size, ads in ((_SMALL, ("O",)), (_SMALL, ("H",)), (_SMALL, ("C", "O")),
                      (_LARGE, ("N",)), (_LARGE, ("O", "H")), (_LARGE, ("N", "H"))))

VACUUM = 7.5  # Å of vacuum below the bottom layer and above the highest adsorbate (z is not periodic)
# Å above the top layer: near EMT's relaxed fcc-hollow heights (H 1.7, C 1.35–1.5, N 1.35–1.5, O 1.55–1.7 on
# Cu/Pt/Ni): H started at 1.0 Å was shot off the surface by the repulsion and desorbed
_HEIGHT = {"H": 1.7, "C": 1.4, "N": 1.4, "O": 1.6}


def build_system(system: CatalysisSystem):
    """The start geometry: slab, adsorbates, bottom layer fixed (FixAtoms), pbc (T, T, F), no calculator."""
    from ase.build import add_adsorbate, fcc111
    from ase.constraints import FixAtoms

    slab = fcc111(system.metal, size=system.size, vacuum=VACUUM, periodic=False)
    slab.pbc = (True, True, False)
    bottom = slab.get_tags() == system.size[2]  # fcc111 tags layers 1 (top) .. layers (bottom)
    for n, element in enumerate(system.adsorbates):
        add_adsorbate(slab, element, _HEIGHT[element], "fcc", offset=(n, n))
    slab.center(vacuum=VACUUM, axis=2)  # vacuum measured from the adsorbates, not from the top metal layer
    slab.set_constraint(FixAtoms(mask=np.concatenate([bottom, np.zeros(len(slab) - len(bottom), bool)])))
    slab.info.pop("adsorbate_info", None)
    return slab


def theory_label() -> str:
    import ase

    return f"EMT (ASE {ase.__version__})"


def _thermalize(atoms, temperature: float, rng) -> None:
    try:  # ASE ≥ 3.29; MaxwellBoltzmannDistribution is its deprecated alias (same draws)
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:  # pragma: no cover - older ASE
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
        return
    thermalize_momenta(atoms, temperature, rng=rng)


def _check_args(frames_per_system, temperature, seed, timestep_fs, interval, equilibration_steps) -> None:
    for flag, value in (("frames_per_system", frames_per_system), ("interval", interval)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    if not isinstance(equilibration_steps, int) or isinstance(equilibration_steps, bool) or equilibration_steps < 0:
        raise ValueError(f"equilibration_steps must be a non-negative integer, got {equilibration_steps!r}")
    for flag, value, unit in (("temperature", temperature, "K"), ("timestep_fs", timestep_fs, "fs")):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{flag} must be a positive finite number ({unit}), got {value!r}")
    if timestep_fs > 2:
        raise ValueError(f"timestep_fs {timestep_fs}: too long for MD with adsorbed H (use ≤ 2 fs, 1 is the default)")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def generate_catalysis(out: str | os.PathLike, frames_per_system: int = 110, temperature: float = 600.0,
                       seed: int = 0, timestep_fs: float = 1.0, interval: int = 10, friction_per_fs: float = 0.01,
                       equilibration_steps: int = 300, systems: tuple[CatalysisSystem, ...] = CATALYSIS_SYSTEMS,
                       overwrite: bool = False, progress=sys.stderr) -> tuple[AtomsDataset, list[str]]:
    """Run EMT Langevin MD for every system and write `frames_per_system` frames each (every `interval`-th
    step after `equilibration_steps`) to `out` with `save_atoms_npz`, in eV and Å.

    Returns (the data set, the Hill formula of each system in order): the compositions an
    out-of-distribution split can hold out (`dcnn.atomistic.splits.ood_split`).  Forces are the raw EMT
    forces on every atom, fixed ones included (their `fixed` flag is stored)."""
    from ase import units
    from ase.calculators.emt import EMT
    from ase.md.langevin import Langevin

    _check_args(frames_per_system, temperature, seed, timestep_fs, interval, equilibration_steps)
    out = Path(out)
    check_output("out", out, {}, overwrite)
    positions, numbers, fixed, cells, energies, forces, temps, system_index = [], [], [], [], [], [], [], []
    t0 = time.perf_counter()
    for s, system in enumerate(systems):
        atoms = build_system(system)
        atoms.calc = EMT()
        rng = np.random.default_rng([seed, s])
        _thermalize(atoms, temperature, rng)
        dyn = Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature,
                       friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
        dyn.run(equilibration_steps)
        mask = atoms.constraints[0].get_indices()
        is_fixed = np.zeros(len(atoms), dtype=bool)
        is_fixed[mask] = True
        for _ in range(frames_per_system):
            dyn.run(interval)
            positions.append(atoms.positions.copy())
            numbers.append(atoms.numbers.astype(np.int64))
            fixed.append(is_fixed)
            cells.append(atoms.cell.array.copy())
            energies.append(atoms.get_potential_energy())
            forces.append(atoms.get_forces(apply_constraint=False).copy())  # raw labels, fixed atoms too
            temps.append(atoms.get_temperature())
            system_index.append(s)
        if progress:
            print(f"\r{s + 1}/{len(systems)} systems ({system.formula}), {len(energies)} frames, "
                  f"{time.perf_counter() - t0:.0f} s, mean T {np.mean(temps[-frames_per_system:]):.0f} K",
                  end="", file=progress, flush=True)
    if progress:
        print(file=progress)
    n = len(energies)
    ds = AtomsDataset(
        np.concatenate(positions), np.concatenate(numbers),
        offsets_from_counts(np.array([len(p) for p in positions], dtype=np.int64)), np.array(cells),
        np.tile(np.array([True, True, False]), (n, 1)), np.array(energies), np.concatenate(forces), "eV",
        theory_label(), "catalysis-emt", str(out), fixed=np.concatenate(fixed))
    formulas = [system.formula for system in systems]
    save_atoms_npz(out, ds, extra={
        "temperature_K": float(temperature), "timestep_fs": float(timestep_fs), "interval": interval,
        "friction_per_fs": float(friction_per_fs), "equilibration_steps": equilibration_steps, "seed": seed,
        "frames_per_system": frames_per_system, "vacuum_A": VACUUM,
        "frame_temperature_K": np.array(temps), "system": np.array(system_index, dtype=np.int64),
        "system_formula": np.array(formulas),
        "generator": "dcnn.atomistic.generate.generate_catalysis (ASE EMT, Langevin, fcc111 + adsorbates)"})
    return ds, formulas
