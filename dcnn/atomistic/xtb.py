"""Generate a data set offline with real physics: GFN2-xTB (tblite) Langevin MD through ASE.

Nothing can be downloaded at run time, so the project makes its own labelled frames.  Avoids two
pitfalls measured when the data were made: Langevin(fixcm=False) plus a FixCom constraint (ASE's fixcm=True overheats small
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

from dcnn.atomistic.molecules import BUNDLED_DATA_DIR, MoleculeDataset, save_npz
from dcnn.outputs import check_output

START_GEOMETRIES = {"ethanol": None, "aspirin": BUNDLED_DATA_DIR / "aspirin.xyz"}


# elements GFN2-xTB parametrises (H to Rn)
XTB_MAX_Z = 86


def start_geometry(molecule: str) -> Atoms:
    """ethanol from ASE's G2 set (MD17 atom order C C O H×6); aspirin from data/aspirin.xyz; or a file."""
    from ase.build import molecule as g2
    from ase.io import read

    if molecule == "ethanol":
        return g2("CH3CH2OH")
    path = START_GEOMETRIES.get(molecule) or Path(molecule)
    if not Path(path).exists():
        raise ValueError(f"--molecule {molecule!r}: not 'ethanol', 'aspirin' or an existing structure file")
    if Path(path).is_dir():
        raise ValueError(f"--molecule {molecule}: is a folder, expected a structure file ASE reads (.xyz, ...)")
    try:
        atoms = read(path, index=0)
    except Exception as e:  # ASE raises many kinds for a malformed file
        raise ValueError(f"--molecule {molecule}: not a structure file ASE can read "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'malformed'})") \
            from None
    if isinstance(atoms, list):
        atoms = atoms[0] if atoms else None
    if atoms is None or len(atoms) == 0:
        raise ValueError(f"--molecule {molecule}: holds no atoms")
    pos = atoms.get_positions()
    if not np.isfinite(pos).all():
        raise ValueError(f"--molecule {molecule}: positions contain NaN/inf")
    bad = sorted({int(z) for z in atoms.numbers if not 1 <= z <= XTB_MAX_Z})
    if bad:
        raise ValueError(f"--molecule {molecule}: atomic number(s) {bad} are not covered by GFN2-xTB (1..86)")
    if len(atoms) > 1:
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(len(atoms), 1)]
        if d.min() < 0.1:
            raise ValueError(f"--molecule {molecule}: two atoms are {d.min():.3g} Å apart (coincident atoms)")
    atoms.calc = None
    return atoms


def check_generate_args(molecule: str, frames, temperature, seed, out, timestep_fs=0.5, interval=10,
                        overwrite: bool = False) -> Atoms:
    """Every argument of `data generate`, checked before the MD starts; returns the start geometry."""
    import math

    for flag, value in (("--frames", frames), ("--interval", interval)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    for flag, value, unit in (("--temperature", temperature, "K"), ("--timestep", timestep_fs, "fs")):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{flag} must be a positive finite number ({unit}), got {value!r}")
    if timestep_fs > 5:
        raise ValueError(f"--timestep {timestep_fs} fs: too long for stable MD with hydrogens (use ≤ 5 fs, "
                         f"0.5 is the default)")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed!r}")
    source = START_GEOMETRIES.get(molecule) or (Path(molecule) if molecule != "ethanol" else None)
    check_output("--out", out, {"--molecule": source}, overwrite)
    return start_geometry(molecule)


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
    atoms = check_generate_args(molecule, frames, temperature, seed, out, timestep_fs, interval, overwrite)
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
