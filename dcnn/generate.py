"""Generate a data set offline with real physics: GFN2-xTB (tblite) Langevin MD through ASE.

Nothing can be downloaded at run time, so the project makes its own labelled frames.  Follows the
pitfalls in design §5: Langevin(fixcm=False) plus a FixCom constraint (ASE's fixcm=True overheats small
molecules), one OpenMP thread per process (also needed for bit-identical output).
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np
from ase import Atoms, units

from dcnn.data import BUNDLED_DATA_DIR, MoleculeDataset, save_npz

START_GEOMETRIES = {"ethanol": None, "aspirin": BUNDLED_DATA_DIR / "aspirin.xyz"}


def start_geometry(molecule: str) -> Atoms:
    """ethanol from ASE's G2 set (MD17 atom order C C O H×6); aspirin from data/aspirin.xyz; or a file."""
    from ase.build import molecule as g2
    from ase.io import read

    if molecule == "ethanol":
        return g2("CH3CH2OH")
    path = START_GEOMETRIES.get(molecule) or Path(molecule)
    if not Path(path).exists():
        raise ValueError(f"--molecule {molecule!r}: not 'ethanol', 'aspirin' or an existing structure file")
    atoms = read(path, index=0)
    atoms.calc = None
    return atoms


def xtb_calculator():
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0)


def theory_label() -> str:
    from importlib.metadata import version

    return f"GFN2-xTB (tblite {version('tblite')})"


def generate(molecule: str, frames: int, temperature: float, seed: int, out: str | os.PathLike,
             timestep_fs: float = 0.5, interval: int = 10, friction_per_fs: float = 0.01,
             equilibration_steps: int = 1000, overwrite: bool = False, progress=sys.stderr) -> MoleculeDataset:
    """Run MD and write `frames` frames (every `interval`-th step after equilibration) to `out`."""
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    out = Path(out)
    if frames <= 0 or temperature <= 0 or interval <= 0 or timestep_fs <= 0:
        raise ValueError("frames, temperature, interval and timestep must be positive")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; refusing to overwrite (pass --force to replace it)")
    atoms = start_geometry(molecule)
    name = molecule if molecule in START_GEOMETRIES else Path(molecule).stem
    atoms.set_constraint(FixCom())
    atoms.calc = xtb_calculator()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    dyn = Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature,
                   friction=friction_per_fs / units.fs, fixcm=False, rng=rng)
    dyn.run(equilibration_steps)

    ev_to_kcal = 1.0 / (units.kcal / units.mol)
    R = np.empty((frames, len(atoms), 3))
    E = np.empty(frames)
    F = np.empty((frames, len(atoms), 3))
    T = np.empty(frames)
    t0 = time.perf_counter()
    for k in range(frames):
        dyn.run(interval)
        R[k] = atoms.positions
        E[k] = atoms.get_potential_energy() * ev_to_kcal
        F[k] = atoms.get_forces(apply_constraint=False) * ev_to_kcal  # raw labels, not FixCom-projected
        T[k] = atoms.get_temperature()
        if progress and ((k + 1) % max(1, frames // 20) == 0 or k + 1 == frames):
            rate = (k + 1) / (time.perf_counter() - t0)
            print(f"\r{name}: {k + 1}/{frames} frames, {rate:.0f} frames/s, "
                  f"mean T {T[:k + 1].mean():.0f} K", end="", file=progress, flush=True)
    if progress:
        print(file=progress)
    ds = MoleculeDataset(R, atoms.numbers.astype(np.int64), E, F, "kcal/mol", theory_label(), name)
    save_npz(out, ds, extra={
        "temperature_K": temperature, "timestep_fs": timestep_fs, "interval": interval,
        "friction_per_fs": friction_per_fs, "equilibration_steps": equilibration_steps, "seed": seed,
        "frame_temperature_K": T, "generator": "dcnn-ablate data generate (ASE Langevin, FixCom)"})
    return ds
