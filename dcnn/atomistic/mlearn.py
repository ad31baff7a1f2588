"""The mlearn benchmark's files (Zuo et al., J. Phys. Chem. A 124, 731 (2020); materialsvirtuallab/mlearn):
real PBE data of Mo, Si and other elements with an official train/test split, read with json and numpy.

Each file is a JSON list of records: `structure` (pymatgen's `Structure.as_dict()`: `lattice.matrix` rows in
Å, `sites[i].xyz` Cartesian Å, `sites[i].species[0].element`), `group` (Ground state, Elastic, AIMD-NVT,
Vacancy, Surface), `outputs.energy` (eV, the whole cell) and `outputs.forces` (eV/Å).  Virial stresses are
not read: their shear components' order differs between the files (data/README.md).  Every cell is fully
periodic (slabs carry their vacuum inside the cell).

`convert` turns a training file and a test file into one `AtomsDataset` whose `test_mask` marks the test
file's frames and whose `groups` are the records' groups: the bundled `mlearn-Mo` / `mlearn-Si` (`make data`,
through dcnn/atomistic/convert_mlearn.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from dcnn.atomistic.dataset import AtomsDataset, offsets_from_counts
from dcnn.atomistic.molecules import DatasetError
from dcnn.atomistic.validate import validate_frames

__all__ = ["read_mlearn", "is_mlearn_json", "convert", "THEORY", "CITATION"]

THEORY = "DFT PBE (VASP), mlearn benchmark"
CITATION = ("Y. Zuo et al., Performance and Cost Assessment of Machine Learning Interatomic Potentials, "
            "J. Phys. Chem. A 124, 731-745 (2020), doi:10.1021/acs.jpca.9b08723; BSD-3-Clause")


def is_mlearn_json(path: str | os.PathLike) -> bool:
    """Whether a .json file is an mlearn record list (it starts with '['; an ASE json database starts with '{')."""
    with open(path, "rb") as fh:
        head = fh.read(256).lstrip()
    return head.startswith(b"[")


def read_mlearn(path: str | os.PathLike, test: bool = False) -> AtomsDataset:
    """One mlearn JSON file as a validated `AtomsDataset` (eV, Å, fully periodic), groups from `group`;
    `test` marks every frame as the data set's own test set.  DatasetError names the record and field."""
    path = Path(path)
    try:
        records = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not readable as mlearn JSON: {type(e).__name__}: {e}") from e
    if not isinstance(records, list) or not records:
        raise DatasetError(f"{path}: an mlearn file is a non-empty JSON list of records")
    positions, numbers, counts, cells, energies, forces, groups = [], [], [], [], [], [], []
    for k, rec in enumerate(records):
        where = f"{path}: record {k}"
        try:
            structure = rec["structure"]
            cell = np.asarray(structure["lattice"]["matrix"], dtype=np.float64)
            sites = structure["sites"]
            xyz = np.asarray([site["xyz"] for site in sites], dtype=np.float64)
            symbols = [site["species"][0]["element"] for site in sites]
            energy = float(rec["outputs"]["energy"])
            f = np.asarray(rec["outputs"]["forces"], dtype=np.float64)
            group = rec.get("group", "")
            if not isinstance(group, str):
                raise TypeError(f"group={group!r} must be a text label")
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise DatasetError(f"{where}: missing or malformed field ({type(e).__name__}: {e}); expected "
                               f"structure.lattice.matrix, structure.sites[].xyz/species, outputs.energy/forces") from e
        unknown = sorted({s for s in symbols if s not in atomic_numbers})
        if unknown:
            raise DatasetError(f"{where}: unknown element symbol(s) {unknown}")
        if cell.shape != (3, 3) or xyz.shape != (len(sites), 3) or f.shape != (len(sites), 3):
            raise DatasetError(f"{where}: shapes lattice {list(cell.shape)}, xyz {list(xyz.shape)}, forces "
                               f"{list(f.shape)} for {len(sites)} sites")
        if "num_atoms" in rec and int(rec["num_atoms"]) != len(sites):
            raise DatasetError(f"{where}: num_atoms={rec['num_atoms']} but {len(sites)} sites")
        positions.append(xyz)
        numbers.append(np.array([atomic_numbers[s] for s in symbols], dtype=np.int64))
        counts.append(len(sites))
        cells.append(cell)
        energies.append(energy)
        forces.append(f)
        groups.append(group)
    n = len(records)
    ds = validate_frames(str(path), np.concatenate(positions), np.concatenate(numbers),
                         offsets_from_counts(np.array(counts, dtype=np.int64)), np.stack(cells),
                         np.ones((n, 3), dtype=bool), np.array(energies), np.concatenate(forces), "eV")
    ds.groups = np.array(groups, dtype=str)
    ds.test_mask = np.full(n, bool(test))
    ds.theory = THEORY
    ds.name = path.stem
    ds.source = str(path)
    return ds


def convert(training: str | os.PathLike, test: str | os.PathLike, name: str) -> AtomsDataset:
    """The training file's frames, then the test file's (marked as the test set), as one data set."""
    parts = [read_mlearn(training), read_mlearn(test, test=True)]
    ds = AtomsDataset.concatenate(parts, name=name, source=f"{training} + {test}")
    ds.theory = THEORY
    return ds
