"""Checks every loaded atomistic data set passes before training: one line per problem, naming the file,
the field and the first frame (and atom) affected, as `dcnn.atomistic.molecules` does for molecules.

What is refused: complex or non-numeric values, wrong shapes, unknown energy units, NaN/inf, atomic numbers
outside 1..118, a degenerate cell on a periodic axis, and two atoms closer than `MIN_DISTANCE` by
minimum-image distance (periodic images included: two atoms on opposite faces of a cell are neighbours).
"""
from __future__ import annotations

import numpy as np

from dcnn.atomistic.molecules import ENERGY_UNITS, MIN_DISTANCE, DatasetError
from dcnn.atomistic.dataset import AtomsDataset
from dcnn.atomistic.neighbors import neighbor_list

__all__ = ["validate_frames", "MIN_CELL_MEASURE", "check_min_distance", "periodic_cell_measure"]

# volume (Å³) of a fully periodic cell, area (Å²) of the periodic plane of a slab, length (Å) of the one
# periodic vector of a wire, below which the cell is degenerate (flat, or vectors parallel)
MIN_CELL_MEASURE = 1e-6
# vesin's cell list is sized by the cutoff: 0.1 Å bins over a slab's vacuum took 0.4 s a frame here, 2 Å bins
# 45 µs; pairs closer than 2 Å are found, then the ones closer than MIN_DISTANCE kept
_CLOSE_PAIR_SEARCH = 2.0


def _locate(offsets: np.ndarray, atom: int) -> tuple[int, int]:
    """(frame, atom within the frame) of a global atom index."""
    k = int(np.searchsorted(offsets, atom, side="right") - 1)
    return k, int(atom - offsets[k])


def periodic_cell_measure(cells: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """[n] volume / area / length spanned by each frame's periodic cell vectors: sqrt of the Gram
    determinant of those rows (|det cell| when all three are periodic); +inf for a non-periodic frame."""
    out = np.full(len(cells), np.inf)
    masks = np.asarray(pbc, dtype=bool)
    for pattern in np.unique(masks, axis=0):  # at most 8 patterns: vectorised over the frames of each
        if not pattern.any():
            continue
        rows = np.all(masks == pattern, axis=1)
        vecs = cells[rows][:, pattern, :]  # [m, p, 3]
        gram = np.einsum("mpi,mqi->mpq", vecs, vecs)
        out[rows] = np.sqrt(np.clip(np.linalg.det(gram), 0.0, None))
    return out


def check_min_distance(positions, offsets, cells, pbc, min_distance: float = MIN_DISTANCE):
    """First (frame, i, j, distance, shift, frames affected) with two atoms (or an atom and its own image)
    closer than `min_distance` by minimum-image distance, else None.  One neighbour-list call per frame."""
    first, n_bad = None, 0
    search = max(_CLOSE_PAIR_SEARCH, min_distance)
    for k in range(len(offsets) - 1):
        a, b = int(offsets[k]), int(offsets[k + 1])
        if b - a < 2 and not pbc[k].any():
            continue
        i, j, s, d = neighbor_list(positions[a:b], cells[k], pbc[k], search, distances=True)
        close = np.flatnonzero(d < min_distance)
        if close.size:
            n_bad += 1
            if first is None:
                p = close[np.argmin(d[close])]
                first = (k, int(i[p]), int(j[p]), float(d[p]), tuple(int(x) for x in s[p]))
    return None if first is None else (*first, n_bad)


def validate_frames(path: str, positions, numbers, offsets, cells, pbc, energies, forces, energy_unit: str,
                    fixed=None) -> AtomsDataset:
    """Check concatenated frames (see `AtomsDataset`) and return them as one; DatasetError otherwise."""
    def fail(msg: str):
        raise DatasetError(f"{path}: {msg}")

    if energy_unit not in ENERGY_UNITS:
        fail(f"energy unit {energy_unit!r} is not one of {ENERGY_UNITS}")
    fields = {"positions": positions, "atomic numbers": numbers, "atoms per frame": offsets, "cells": cells,
              "pbc": pbc, "energies": energies, "forces": forces}
    if fixed is not None:
        fields["fixed"] = fixed
    fields = {k: np.asarray(v) for k, v in fields.items()}
    for label, arr in fields.items():
        if np.iscomplexobj(arr):  # refused even with zero imaginary parts: complex labels are never data
            nonzero = "nonzero" if np.any(np.imag(arr) != 0) else "all zero"
            fail(f"{label} are complex numbers (dtype {arr.dtype}, imaginary parts {nonzero}); expected real numbers")
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            fail(f"{label} are not numbers (dtype {arr.dtype})")
    positions, numbers, offsets, cells, pbc, energies, forces = (
        fields[k] for k in ("positions", "atomic numbers", "atoms per frame", "cells", "pbc", "energies", "forces"))

    if offsets.ndim != 1 or len(offsets) < 1 or not np.issubdtype(offsets.dtype, np.integer) or offsets[0] != 0:
        fail(f"frame offsets must be integers [frames+1] starting at 0, got shape {list(offsets.shape)}")
    offsets = offsets.astype(np.int64)
    n = len(offsets) - 1
    if n == 0:
        fail("no frames (empty data set)")
    sizes = np.diff(offsets)
    if np.any(sizes <= 0):
        fail(f"frame {int(np.argmax(sizes <= 0))} has {int(sizes[np.argmax(sizes <= 0)])} atoms "
             f"(every frame needs at least one)")
    n_total = int(offsets[-1])
    if positions.shape != (n_total, 3):
        fail(f"positions must have shape [atoms, 3] = [{n_total}, 3] (the frames' atom counts add up to "
             f"{n_total}), got {list(positions.shape)}")
    if numbers.shape != (n_total,):
        fail(f"wrong atom count: {numbers.shape[0] if numbers.ndim else 0} atomic numbers (shape "
             f"{list(numbers.shape)}) but the frames have {n_total} atoms")
    if forces.shape != (n_total, 3):
        fail(f"forces must have the shape of positions [{n_total}, 3], got {list(forces.shape)}")
    energies = energies.reshape(-1) if energies.ndim == 2 and energies.shape[1] == 1 else energies
    if energies.shape != (n,):
        fail(f"energies must have shape [{n}] (one per frame), got {list(energies.shape)}")
    if cells.shape != (n, 3, 3):
        fail(f"cells must have shape [{n}, 3, 3] (one 3×3 cell per frame, zeros for none), got {list(cells.shape)}")
    if pbc.shape != (n, 3):
        fail(f"pbc must have shape [{n}, 3] (three booleans per frame), got {list(pbc.shape)}")
    if not np.all((pbc == 0) | (pbc == 1)):
        fail("pbc must be booleans (0/1)")
    pbc = pbc.astype(bool)
    if fixed is not None:
        fixed = fields["fixed"]
        if fixed.shape != (n_total,) or not np.all((fixed == 0) | (fixed == 1)):
            fail(f"fixed must be one boolean per atom [{n_total}], got shape {list(fixed.shape)}")
        fixed = fixed.astype(bool)

    if not np.all(np.isfinite(numbers)) or not np.all(np.mod(numbers, 1) == 0):
        bad = int(np.argmax(~np.isfinite(numbers) | (np.mod(np.nan_to_num(numbers), 1) != 0)))
        k, a = _locate(offsets, bad)
        fail(f"atomic numbers must be integers, got {numbers[bad]} at atom {a} of frame {k} (dtype {numbers.dtype})")
    numbers = numbers.astype(np.int64)
    out_of_range = (numbers < 1) | (numbers > 118)
    if out_of_range.any():
        bad = int(np.argmax(out_of_range))
        k, a = _locate(offsets, bad)
        fail(f"atomic number {numbers[bad]} at atom {a} of frame {k} is outside 1..118 "
             f"({int(out_of_range.sum())} atoms in all)")

    per_atom = {"positions": positions, "forces": forces}
    for label, arr in per_atom.items():
        bad_atoms = ~np.isfinite(arr).all(axis=1)
        if bad_atoms.any():
            frames = np.unique(np.searchsorted(offsets, np.flatnonzero(bad_atoms), side="right") - 1)
            k, a = _locate(offsets, int(np.argmax(bad_atoms)))
            fail(f"{label} contain NaN/inf in {len(frames)} frame(s), first at frame {k} (atom {a})")
    for label, arr in (("energies", energies), ("cells", cells)):
        bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
        if bad.any():
            fail(f"{label} contain NaN/inf in {int(bad.sum())} frame(s), first at frame {int(np.argmax(bad))}")

    measure = periodic_cell_measure(cells.astype(np.float64), pbc)
    degenerate = measure < MIN_CELL_MEASURE
    if degenerate.any():
        k = int(np.argmax(degenerate))
        axes = "".join("xyz"[a] for a in range(3) if pbc[k, a])
        what = {3: "volume |det| (Å³)", 2: "area of the periodic plane (Å²)", 1: "length (Å)"}[len(axes)]
        fail(f"degenerate cell in frame {k}: periodic along {axes} but the periodic cell vectors' {what} is "
             f"{measure[k]:.3g} (< {MIN_CELL_MEASURE:g}); cell {np.round(cells[k], 6).tolist()} "
             f"({int(degenerate.sum())} frame(s) affected)")

    positions = positions.astype(np.float64)
    cells = cells.astype(np.float64)
    close = check_min_distance(positions, offsets, cells, pbc)
    if close is not None:
        k, i, j, d, shift, n_bad = close
        zi, zj = numbers[offsets[k] + i], numbers[offsets[k] + j]
        across = "" if not any(shift) else f" by minimum image (across the periodic boundary, cell shift {shift})"
        who = f"atom {i} and its own periodic image" if i == j else f"atoms {i} and {j}"
        fail(f"positions: {who} (Z={zi}, {zj}) are {d:.3g} Å apart{across} in frame {k} (closer than "
             f"{MIN_DISTANCE} Å: not a physical geometry; {n_bad} frame(s) affected)")
    return AtomsDataset(positions, numbers, offsets, cells, pbc, energies.astype(np.float64),
                        forces.astype(np.float64), energy_unit, source=path, fixed=fixed)
