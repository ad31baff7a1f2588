"""Frames of any size, composition and cell, stored concatenated (the layout of PyG/fairchem batches).

A molecule data set has one atom count; OC22-style catalysis data has slabs of different sizes, metals and
adsorbates, periodic in x and y.  One dense [frames, atoms, 3] array cannot hold both, so every per-atom
array is concatenated over frames ([A, ...], A = total atoms) and `offsets` [n+1] says where each frame
starts: frame k is atoms offsets[k]:offsets[k+1].  Per-frame arrays (energies, cells, pbc) are [n, ...].
A frame without a cell has a zero cell and pbc all False.  Slicing and batching use `concat_ranges`, so
no per-atom Python loop is ever needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dcnn.atomistic.molecules import DatasetError, MoleculeDataset, to_energy_unit

__all__ = ["AtomsDataset", "concat_ranges", "offsets_from_counts"]


def offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    """[n] sizes → [n+1] offsets (0, c0, c0+c1, ...), int64."""
    out = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=out[1:])
    return out


def concat_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenation of arange(s, s + l) for each (s, l), vectorised: the atom (or edge) indices of a
    set of frames.  E.g. starts [0, 10], lengths [2, 3] → [0, 1, 10, 11, 12]."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    # position within the output minus the output offset of its range, plus the range's start
    return np.arange(total, dtype=np.int64) + np.repeat(starts - offsets_from_counts(lengths)[:-1], lengths)


@dataclass
class AtomsDataset:
    """Labelled frames of any size and composition. Lengths in Å, energies in `energy_unit`, forces in
    `energy_unit`/Å.  `fixed` [A] marks atoms held fixed in the simulation (OC20/OC22 slabs' bottom
    layers): their forces are real labels, but OC-style force metrics may be computed on free atoms only."""

    positions: np.ndarray  # [A, 3] float64, Å
    numbers: np.ndarray  # [A] int64
    offsets: np.ndarray  # [n+1] int64, frame k = atoms offsets[k]:offsets[k+1]
    cells: np.ndarray  # [n, 3, 3] float64, Å, rows = cell vectors; zeros for no cell
    pbc: np.ndarray  # [n, 3] bool
    energies: np.ndarray  # [n] float64
    forces: np.ndarray  # [A, 3] float64
    energy_unit: str = "eV"
    theory: str = "unknown"
    name: str = ""
    source: str = ""
    metadata: dict = field(default_factory=dict)
    fixed: np.ndarray | None = None  # [A] bool; None = no atom fixed
    # [n] str: the kind of configuration of each frame (extxyz `config_type`, mlearn's `group`: "Surface",
    # "AIMD-NVT", ...); None = no groups.  The report breaks the test errors down by it
    groups: np.ndarray | None = None
    # [n] bool: the frames of the data set's own test set (a benchmark's official split, or the frames of a
    # `test_dataset` file); None = no test set of its own, the split draws one
    test_mask: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.fixed is None:
            self.fixed = np.zeros(len(self.numbers), dtype=bool)
        n = len(self.energies)
        if self.groups is not None:
            self.groups = np.asarray(self.groups, dtype=str)
            if self.groups.shape != (n,):
                raise DatasetError(f"{self.source or self.name}: groups have shape {list(self.groups.shape)} for "
                                   f"{n} frames (one label per frame)")
        if self.test_mask is not None:
            self.test_mask = np.asarray(self.test_mask, dtype=bool)
            if self.test_mask.shape != (n,):
                raise DatasetError(f"{self.source or self.name}: test mask has shape {list(self.test_mask.shape)} "
                                   f"for {n} frames")

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def n_atoms(self) -> np.ndarray:
        """Atoms per frame, [n] int64."""
        return np.diff(self.offsets)

    @property
    def total_atoms(self) -> int:
        return int(self.offsets[-1])

    @property
    def force_unit(self) -> str:
        return f"{self.energy_unit}/Å"

    @property
    def atom_frame(self) -> np.ndarray:
        """The frame of every atom, [A] int64 (the `batch` vector of the whole data set)."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.n_atoms)

    @property
    def is_periodic(self) -> bool:
        """Whether any frame is periodic along any axis (then neighbour lists need cell shifts)."""
        return bool(self.pbc.any())

    @property
    def fixed_size(self) -> bool:
        """One atom count and the same atomic numbers in the same order in every frame: the special case of
        today's molecule data sets, which a dense [n, N, 3] layout (and CUDA graphs) can use."""
        sizes = self.n_atoms
        if len(sizes) == 0 or not np.all(sizes == sizes[0]):
            return False
        per_frame = self.numbers.reshape(len(self), int(sizes[0]))
        return bool(np.all(per_frame == per_frame[0]))

    def frame_slice(self, k: int) -> slice:
        return slice(int(self.offsets[k]), int(self.offsets[k + 1]))

    def atom_index(self, index: np.ndarray) -> np.ndarray:
        """The concatenated atom indices of frames `index` (in that order)."""
        index = self._frame_index(index)
        return concat_ranges(self.offsets[:-1][index], self.n_atoms[index])

    def subset(self, index) -> "AtomsDataset":
        """A new data set of frames `index` (ints or a boolean mask, any order), with offsets rebuilt."""
        index = self._frame_index(index)
        atoms = self.atom_index(index)
        return AtomsDataset(
            self.positions[atoms], self.numbers[atoms], offsets_from_counts(self.n_atoms[index]),
            self.cells[index], self.pbc[index], self.energies[index], self.forces[atoms], self.energy_unit,
            self.theory, self.name, self.source, dict(self.metadata), self.fixed[atoms],
            None if self.groups is None else self.groups[index],
            None if self.test_mask is None else self.test_mask[index])

    @property
    def has_own_test_set(self) -> bool:
        """Whether the data set says which frames are its test set (an official split)."""
        return self.test_mask is not None and bool(self.test_mask.any())

    @classmethod
    def concatenate(cls, parts: list["AtomsDataset"], name: str = "", source: str = "") -> "AtomsDataset":
        """Frames of several data sets in order (one energy unit); groups kept where every part has them, test
        masks where any part has one (a part without one counts as not test)."""
        units = {p.energy_unit for p in parts}
        if len(units) != 1:
            raise DatasetError(f"{source or name}: the parts are in different energy units ({', '.join(sorted(units))})")
        n_atoms = np.concatenate([p.n_atoms for p in parts])
        groups = (np.concatenate([p.groups for p in parts]) if all(p.groups is not None for p in parts) else None)
        test = (np.concatenate([p.test_mask if p.test_mask is not None else np.zeros(len(p), bool) for p in parts])
                if any(p.test_mask is not None for p in parts) else None)
        return cls(np.concatenate([p.positions for p in parts]), np.concatenate([p.numbers for p in parts]),
                   offsets_from_counts(n_atoms), np.concatenate([p.cells for p in parts]),
                   np.concatenate([p.pbc for p in parts]), np.concatenate([p.energies for p in parts]),
                   np.concatenate([p.forces for p in parts]), parts[0].energy_unit, parts[0].theory,
                   name or parts[0].name, source or parts[0].source, dict(parts[0].metadata),
                   np.concatenate([p.fixed for p in parts]), groups, test)

    def frame_atoms(self, k: int):
        """Frame k as `ase.Atoms` with a SinglePointCalculator holding its energy and forces converted to
        eV and eV/Å (ASE's units, whatever `energy_unit` is), and a FixAtoms constraint for fixed atoms."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.constraints import FixAtoms

        k = int(self._frame_index(np.array([k]))[0])
        s = self.frame_slice(k)
        atoms = Atoms(numbers=self.numbers[s], positions=self.positions[s], cell=self.cells[k], pbc=self.pbc[k])
        fixed = np.flatnonzero(self.fixed[s])
        if fixed.size:
            atoms.set_constraint(FixAtoms(indices=fixed))
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(to_energy_unit(self.energies[k], self.energy_unit, "eV")),
            forces=to_energy_unit(self.forces[s], self.energy_unit, "eV"))
        return atoms

    def compositions(self) -> tuple[np.ndarray, np.ndarray]:
        """(species [S] sorted atomic numbers, counts [n, S] int64): how many atoms of each species every
        frame has — the design matrix of per-species reference energies and of composition splits."""
        species, column = np.unique(self.numbers, return_inverse=True)
        counts = np.zeros((len(self), len(species)), dtype=np.int64)
        np.add.at(counts, (self.atom_frame, column.reshape(-1)), 1)
        return species.astype(np.int64), counts

    def formulas(self) -> list[str]:
        """The Hill formula of every frame (e.g. 'CCu27O'), from the composition counts."""
        from ase.formula import Formula

        species, counts = self.compositions()
        unique, inverse = np.unique(counts, axis=0, return_inverse=True)
        symbols = [_symbol(z) for z in species]
        names = [Formula.from_dict({s: int(c) for s, c in zip(symbols, row) if c}).format("hill")
                 for row in unique]
        return [names[i] for i in inverse.reshape(-1)]

    def check_numbers(self, max_z: int) -> None:
        """Refuse atomic numbers a model cannot embed (`nn.Embedding(max_z, ...)` fits 0..max_z − 1)."""
        too_big = np.flatnonzero(self.numbers >= max_z)
        if too_big.size:
            a = int(too_big[0])
            k = int(self.atom_frame[a])
            more = f" ({too_big.size} atoms in all)" if too_big.size > 1 else ""
            raise DatasetError(f"{self.source or self.name}: atomic number {int(self.numbers[a])} at atom "
                               f"{a - int(self.offsets[k])} of frame {k} exceeds the model's embedding size "
                               f"(max {max_z - 1}, max_z={max_z}){more}")

    @classmethod
    def from_molecule(cls, ds: MoleculeDataset) -> "AtomsDataset":
        """Today's one-molecule data set (dense [n, N, 3]) on the concatenated layout: no cell, no pbc."""
        n, n_atoms = len(ds), ds.n_atoms
        return cls(
            positions=ds.positions.reshape(n * n_atoms, 3), numbers=np.tile(ds.numbers.astype(np.int64), n),
            offsets=np.arange(n + 1, dtype=np.int64) * n_atoms, cells=np.zeros((n, 3, 3)),
            pbc=np.zeros((n, 3), dtype=bool), energies=ds.energies, forces=ds.forces.reshape(n * n_atoms, 3),
            energy_unit=ds.energy_unit, theory=ds.theory, name=ds.name, source=ds.source,
            metadata=dict(ds.metadata))

    def to_molecule(self) -> MoleculeDataset:
        """Back to the dense one-molecule layout; only for `fixed_size` frames without periodicity."""
        if not self.fixed_size or self.is_periodic:
            raise DatasetError(f"{self.source or self.name}: frames differ in size or composition, or are "
                               f"periodic: not one molecule (use the AtomsDataset layout)")
        n, n_atoms = len(self), int(self.n_atoms[0])
        return MoleculeDataset(self.positions.reshape(n, n_atoms, 3), self.numbers[:n_atoms].copy(),
                               self.energies, self.forces.reshape(n, n_atoms, 3), self.energy_unit, self.theory,
                               self.name, self.source, dict(self.metadata))

    def _frame_index(self, index) -> np.ndarray:
        index = np.asarray(index)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean frame mask of shape {index.shape} for {len(self)} frames")
            return np.flatnonzero(index)
        index = index.astype(np.int64).reshape(-1)
        if index.size and (index.min() < -len(self) or index.max() >= len(self)):
            raise IndexError(f"frame index out of range for {len(self)} frames")
        return np.where(index < 0, index + len(self), index)


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(z)]
