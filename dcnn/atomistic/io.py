"""Load any atomistic data set into an `AtomsDataset`, validated; write the variable-size npz layout.

Sources, told apart by name, extension and content:
- a bundled name (`ATOMS_DATASETS`: the molecules "ethanol", "aspirin" and the EMT slabs "catalysis");
- MD17 / rMD17 npz (one molecule): read by `dcnn.atomistic.molecules.load_dataset` (its checks and messages), converted;
- the variable-size npz (`save_atoms_npz`): R [A,3], z [A], N [n] atoms per frame, E [n], F [A,3],
  cell [n,3,3], pbc [n,3], energy_unit, theory, name (+ fixed [A], group [n] text: the kind of each frame,
  test [n] bool: the data set's own test frames, units, scalar settings);
- an ASE database (`.db` sqlite, `.json`), optionally with a selection after `?` passed to `db.select`,
  e.g. `slabs.db?natoms<60,pbc=TTF`: labels from `row.data` REF_energy/REF_forces, else the row's
  calculator results;
- anything else ASE reads (`ase.io.read(path, index=":")`, extxyz first of all): labels from
  REF_energy (info) / REF_forces (arrays), else the calculator's energy/forces; a frame's `config_type`
  (info, MACE's and the GAP fitting's convention) is its group.
ASE sources are in eV and Å (ASE's units).  Pickles are never unpickled (`np.load(allow_pickle=False)`).
"""
from __future__ import annotations

import io
import os
import sqlite3
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from dcnn.atomistic.molecules import (BUNDLED_DATA_DIR, BUNDLED_DATASETS, DatasetError, load_dataset, npz_error,
                                      write_npz_deterministic)
from dcnn.atomistic.dataset import AtomsDataset, offsets_from_counts
from dcnn.atomistic.mlearn import is_mlearn_json, read_mlearn
from dcnn.atomistic.validate import validate_frames

__all__ = ["ATOMS_DATASETS", "load_atoms", "load_with_test_set", "save_atoms_npz", "resolve_atoms_source", "DB_SUFFIXES"]

ATOMS_DATASETS = {**BUNDLED_DATASETS, "catalysis": BUNDLED_DATA_DIR / "catalysis-emt.npz",
                  # real DFT with the benchmark's official train/test split (dcnn/atomistic/mlearn.py)
                  "mlearn-Mo": BUNDLED_DATA_DIR / "mlearn-Mo.npz", "mlearn-Si": BUNDLED_DATA_DIR / "mlearn-Si.npz"}
DB_SUFFIXES = (".db", ".json")
_ATOMS_KEYS = ("R", "z", "N", "E", "F")
_MOLECULE_LAYOUTS = (("R", "z", "E", "F"), ("coords", "nuclear_charges", "energies", "forces"))
_LAYOUT = "R [A,3], z [A], N [n], E [n], F [A,3], cell [n,3,3], pbc [n,3], energy_unit"
_TEXT_KEYS = ("energy_unit", "force_unit", "length_unit", "theory", "name")


def resolve_atoms_source(value: str | os.PathLike, base: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """(file, selection query or None) for a bundled name, a path, or `database?query`.

    A relative path is taken relative to `base` (default: the current directory) and made absolute (Ray
    trials change directory).  The text after the first `?` is a query only when the whole value is not an
    existing file."""
    text = os.fsdecode(os.fspath(value))
    if text in ATOMS_DATASETS:
        return ATOMS_DATASETS[text], None
    if not text.strip():
        raise DatasetError(f"data set {text!r}: no file named (bundled: {', '.join(ATOMS_DATASETS)})")
    root = Path(base if base is not None else os.getcwd()).expanduser()
    absolute = lambda t: Path(t).expanduser() if Path(t).expanduser().is_absolute() else root / Path(t).expanduser()  # noqa: E731
    query = None
    given = text
    if "?" in text and not absolute(text).exists():
        text, query = text.split("?", 1)
    path = absolute(text).absolute()
    if not path.exists():
        raise DatasetError(f"data set {given!r} is neither a bundled data set ({', '.join(ATOMS_DATASETS)}) "
                           f"nor an existing file (looked for {path})")
    return path, query


def load_atoms(path_or_name: str | os.PathLike, max_z: int | None = None,
               base: str | os.PathLike | None = None) -> AtomsDataset:
    """Load and validate a data set of any size, composition and cell (see the module docstring for the
    sources); raises DatasetError, one line naming the file and the problem.  With `max_z` (a model's
    embedding size) also refuses atomic numbers the model cannot embed."""
    path, query = resolve_atoms_source(path_or_name, base)
    where = f"{path}?{query}" if query is not None else str(path)
    if not path.exists():
        raise DatasetError(f"{where}: no such file (bundled data sets: {', '.join(ATOMS_DATASETS)})")
    if path.is_dir():
        raise DatasetError(f"{where}: is a directory, expected a data file")
    if path.stat().st_size == 0:
        raise DatasetError(f"{where}: empty file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    if query is None and path.suffix.lower() == ".json" and is_mlearn_json(path):
        ds = read_mlearn(path)  # mlearn's record list (its own test file is given as test_dataset)
        ds.test_mask = None
    elif query is not None or path.suffix.lower() in DB_SUFFIXES or head.startswith(b"SQLite format 3\x00"):
        ds = _load_db(path, query)
    elif path.suffix.lower() == ".npz" or head[:4] == b"PK\x03\x04":
        ds = _load_npz(path, head)
    else:
        ds = _load_ase(path)
    if max_z is not None:
        ds.check_numbers(max_z)
    return ds


def load_with_test_set(dataset: str | os.PathLike, test_dataset: str | os.PathLike = "",
                       base: str | os.PathLike | None = None) -> AtomsDataset:
    """`dataset`, with the frames of `test_dataset` (if given) appended as its own test set (`test_mask`):
    a benchmark's train file and test file, kept apart (dcnn.atomistic.splits.official_split)."""
    ds = load_atoms(dataset, base=base)
    if not str(test_dataset):
        return ds
    if ds.has_own_test_set:
        raise DatasetError(f"{dataset}: has a test set of its own ({int(ds.test_mask.sum())} frames), and "
                           f"test_dataset={test_dataset} gives another: give one or the other")
    test = load_atoms(test_dataset, base=base)
    unseen = sorted(set(test.numbers.tolist()) - set(ds.numbers.tolist()))
    if unseen:
        from ase.data import chemical_symbols

        raise DatasetError(f"{test_dataset}: holds element(s) {', '.join(chemical_symbols[z] for z in unseen)} that "
                           f"no frame of {dataset} has: a model cannot learn an element's energy from a test set "
                           f"(add frames with it to the training file)")
    if test.energy_unit != ds.energy_unit:
        raise DatasetError(f"{test_dataset}: energies in {test.energy_unit}, but {dataset} has {ds.energy_unit}: "
                           f"a test set must be in the training data's units")
    test.test_mask = np.ones(len(test), dtype=bool)
    ds.test_mask = np.zeros(len(ds), dtype=bool)
    if (ds.groups is None) != (test.groups is None):  # groups on one side only: label the other's frames
        if ds.groups is None:
            ds.groups = np.full(len(ds), "", dtype=str)
        else:
            test.groups = np.full(len(test), "", dtype=str)
    out = AtomsDataset.concatenate([ds, test], name=ds.name, source=f"{ds.source or dataset} + test {test_dataset}")
    out.theory = ds.theory
    return out


# ---------------------------------------------------------------------------------------------- npz


def _text(arrays: dict, key: str, path: Path, default: str | None = None) -> str:
    if key not in arrays:
        if default is None:
            raise DatasetError(f"{path}: missing field {key!r} (the variable-size layout needs it: {_LAYOUT})")
        return default
    a = np.asarray(arrays[key])
    if a.size != 1:
        raise DatasetError(f"{path}: field {key!r} must be one text, got an array of shape {list(a.shape)}")
    return str(a.item() if a.shape == () else a.ravel()[0])


def _load_npz(path: Path, head: bytes) -> AtomsDataset:
    if head[:4] != b"PK\x03\x04":  # an npz is a zip archive; text, a lone .npy or a pickle is not
        what = ("a single .npy array" if head[:6] == b"\x93NUMPY" else
                "a pickle" if head[:1] == b"\x80" else f"a file starting with {head[:8]!r}")
        raise DatasetError(f"{path}: not an npz archive (an npz is a zip file of arrays: R, z, E, F as "
                           f"MD17's, or {', '.join(_ATOMS_KEYS)} for frames of different sizes); this is {what}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = set(npz.files)
            flat = "R" in keys and npz["R"].ndim == 2  # [atoms, 3]: the variable-size layout, whatever else
            molecule_like = any(set(layout) <= keys for layout in _MOLECULE_LAYOUTS) or (
                not flat and keys & {"R", "z", "coords", "nuclear_charges"})  # a molecule file, however broken
            if "N" not in keys and not flat and molecule_like:
                # one molecule: MD17 / rMD17, read by the molecule loader (its checks and messages)
                return AtomsDataset.from_molecule(load_dataset(path))
            arrays = {k: npz[k] for k in npz.files}
    except DatasetError:
        raise
    except Exception as e:  # object arrays (they need pickle: refused), a damaged member, not a zip
        raise npz_error(path, e) from e
    missing = [k for k in _ATOMS_KEYS if k not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing keys {missing} (variable-size layout {_LAYOUT}; or one molecule: "
                           f"MD17 R, z, E, F or rMD17 coords, nuclear_charges, energies, forces); found {sorted(arrays)}")
    sizes = np.asarray(arrays["N"])
    if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer):
        raise DatasetError(f"{path}: field 'N' (atoms per frame) must be integers [frames], got dtype "
                           f"{sizes.dtype} shape {list(sizes.shape)}")
    if np.any(sizes < 0):
        raise DatasetError(f"{path}: field 'N' has a negative atom count at frame {int(np.argmax(sizes < 0))}")
    n = len(sizes)
    if ("cell" in arrays) != ("pbc" in arrays):
        raise DatasetError(f"{path}: has {'cell' if 'cell' in arrays else 'pbc'} without "
                           f"{'pbc' if 'cell' in arrays else 'cell'} (both or neither)")
    cells = arrays.get("cell", np.zeros((n, 3, 3)))
    pbc = arrays.get("pbc", np.zeros((n, 3), dtype=bool))
    unit = _text(arrays, "energy_unit", path)
    ds = validate_frames(str(path), arrays["R"], arrays["z"], offsets_from_counts(sizes), cells, pbc,
                         arrays["E"], arrays["F"], unit, arrays.get("fixed"))
    ds.theory = _text(arrays, "theory", path, "unknown")
    ds.name = _text(arrays, "name", path, path.stem)
    for key, kind in (("group", "U"), ("test", "b")):
        if key in arrays:
            a = np.asarray(arrays[key])
            if a.shape != (n,) or a.dtype.kind != kind:
                raise DatasetError(f"{path}: field {key!r} must be {'text' if kind == 'U' else 'booleans'} [frames] "
                                   f"({n}), got dtype {a.dtype} shape {list(a.shape)}")
    ds.groups = np.asarray(arrays["group"]) if "group" in arrays else None
    ds.test_mask = np.asarray(arrays["test"]) if "test" in arrays else None
    ds.metadata = {k: np.asarray(v).item() for k, v in arrays.items()
                   if k not in (*_ATOMS_KEYS, "cell", "pbc", "fixed", "group", "test", *_TEXT_KEYS)
                   and np.asarray(v).size == 1}
    return ds


def save_atoms_npz(path: str | os.PathLike, ds: AtomsDataset, extra: dict | None = None) -> None:
    """Write the variable-size layout byte-for-byte reproducibly (as `dcnn.atomistic.molecules.save_npz` does for
    molecules): fixed zip timestamps and permissions, keys in sorted order, so the same data give the same
    file and a checksum in data/README.md can be checked.  Written to a temp file and renamed."""
    arrays = {"R": ds.positions, "z": ds.numbers, "N": ds.n_atoms, "E": ds.energies, "F": ds.forces,
              "cell": ds.cells, "pbc": ds.pbc, "fixed": ds.fixed,
              "energy_unit": np.array(ds.energy_unit), "force_unit": np.array(ds.force_unit),
              "length_unit": np.array("Å"), "theory": np.array(ds.theory), "name": np.array(ds.name)}
    if ds.groups is not None:
        arrays["group"] = np.asarray(ds.groups, dtype=str)
    if ds.test_mask is not None:
        arrays["test"] = np.asarray(ds.test_mask, dtype=bool)
    for k, v in (extra or {}).items():
        if k in arrays:
            raise ValueError(f"extra field {k!r} would replace a field of the layout")
        arrays[k] = np.asarray(v)
    write_npz_deterministic(path, arrays)


# ---------------------------------------------------------------------------------------------- ASE


def _first_line(e: Exception) -> str:
    text = str(e)
    return text.splitlines()[0][:200] if text.strip() else "malformed"


def _fixed_mask(atoms) -> np.ndarray:
    """Atoms held by FixAtoms constraints (other constraints do not change the labels)."""
    from ase.constraints import FixAtoms

    mask = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            mask[np.asarray(c.index, dtype=np.int64)] = True
    return mask


def _from_frames(where: str, frames: list, labels) -> AtomsDataset:
    """Concatenate ASE frames; `labels(k, atoms)` → (energy, forces) of frame k (or raises DatasetError)."""
    energies, forces = np.empty(len(frames)), []
    for k, atoms in enumerate(frames):
        e, f = labels(k, atoms)
        energies[k] = e
        f = np.asarray(f)
        if np.iscomplexobj(f) or not np.issubdtype(f.dtype, np.number):
            raise DatasetError(f"{where}: frame {k}: forces must be real numbers, got dtype {f.dtype}")
        if f.shape != (len(atoms), 3):
            raise DatasetError(f"{where}: frame {k}: forces have shape {list(f.shape)} for {len(atoms)} atoms "
                               f"(expected [{len(atoms)}, 3])")
        forces.append(f.astype(np.float64))
    cat = lambda arrays, shape: np.concatenate(arrays) if arrays else np.zeros(shape)  # noqa: E731
    return validate_frames(
        where, cat([a.positions for a in frames], (0, 3)), cat([a.numbers for a in frames], (0,)).astype(np.int64),
        offsets_from_counts(np.array([len(a) for a in frames], dtype=np.int64)),
        np.array([a.cell.array for a in frames]).reshape(-1, 3, 3), np.array([a.pbc for a in frames]).reshape(-1, 3),
        energies, cat(forces, (0, 3)), "eV", cat([_fixed_mask(a) for a in frames], (0,)).astype(bool))


def _scalar_energy(value, where: str, k: int) -> float:
    a = np.asarray(value)
    if np.iscomplexobj(a):
        raise DatasetError(f"{where}: frame {k}: energy is a complex number ({value!r}); expected a real number")
    if a.size != 1 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise DatasetError(f"{where}: frame {k}: energy must be one number, got {value!r}")
    return float(a.reshape(()))


def _load_ase(path: Path) -> AtomsDataset:
    from ase.io import read

    try:
        frames = read(path, index=":")
    except Exception as e:  # ASE raises many kinds for an unknown or malformed file
        raise DatasetError(f"{path}: unreadable by ASE: {type(e).__name__}: {_first_line(e)}") from e
    if not frames:
        raise DatasetError(f"{path}: no frames (empty data set)")

    def labels(k, atoms):
        results = atoms.calc.results if atoms.calc is not None else {}
        if "REF_energy" in atoms.info:
            e = atoms.info["REF_energy"]
        elif "energy" in results:
            e = results["energy"]
        else:
            raise DatasetError(f"{path}: frame {k} has no energy (expected REF_energy or a calculator energy)")
        if "REF_forces" in atoms.arrays:
            f = atoms.arrays["REF_forces"]
        elif "forces" in results:
            f = results["forces"]  # raw results: get_forces() would zero the forces of fixed atoms
        else:
            raise DatasetError(f"{path}: frame {k} has no forces (expected REF_forces or calculator forces)")
        return _scalar_energy(e, str(path), k), f

    ds = _from_frames(str(path), frames, labels)
    ds.name = path.stem
    ds.theory = str(frames[0].info.get("theory", "unknown"))
    if any("config_type" in a.info for a in frames):
        for k, a in enumerate(frames):
            kind = a.info.get("config_type", "")
            if not isinstance(kind, str):
                shown = kind.item() if isinstance(kind, np.generic) else kind
                raise DatasetError(f"{path}: frame {k}: config_type={shown!r} (a number or array) must be a text "
                                   f"label naming the frame's group (e.g. config_type=surface)")
        ds.groups = np.array([a.info.get("config_type", "") for a in frames], dtype=str)
    return ds


# ---------------------------------------------------------------------------------------------- ASE db


def _check_sqlite_is_ase(path: Path) -> None:
    """Refuse a file that is not an ASE sqlite database without touching it (ase.db.connect would create
    its tables in any sqlite file, and in a missing one)."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head != b"SQLite format 3\x00":
        raise DatasetError(f"{path}: not an ASE database (not an sqlite file: starts with {head[:8]!r})")
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        raise DatasetError(f"{path}: not an ASE database (sqlite: {e})") from e
    if "systems" not in tables:
        raise DatasetError(f"{path}: an sqlite file but not an ASE database (no 'systems' table; tables: "
                           f"{sorted(tables) or 'none'})")


def _select(db, query: str | None, kind: str) -> list:
    """The rows of `db.select(query)`.  A JSON database is queried through a temporary sqlite copy: ASE's
    JSON backend fails on `pbc=TTF` under numpy 2 (`'FT'[numpy.bool_]`), and one backend's query rules
    then hold for both."""
    import ase.db

    if not query:
        return list(db.select())
    if kind != "json":
        return list(db.select(query))
    with tempfile.TemporaryDirectory() as tmp:
        copy = ase.db.connect(Path(tmp) / "copy.db", use_lock_file=False)
        with copy:  # one transaction
            for row in db.select():
                copy.write(row)
        return list(copy.select(query))


def _load_db(path: Path, query: str | None) -> AtomsDataset:
    import ase.db

    where = f"{path}?{query}" if query is not None else str(path)
    suffix = path.suffix.lower()
    kind = "json" if suffix == ".json" else "db"
    if suffix not in DB_SUFFIXES and not path.read_bytes()[:16].startswith(b"SQLite format 3"):
        raise DatasetError(f"{where}: a selection query (after '?') applies to ASE databases ({', '.join(DB_SUFFIXES)}) "
                           f"only")
    if kind == "db":
        _check_sqlite_is_ase(path)
    try:  # use_lock_file=False: reading must not leave a .lock file beside the user's database
        db = ase.db.connect(str(path), type=kind, create_indices=False, use_lock_file=False)
        total = db.count()
    except Exception as e:  # malformed JSON, a JSON file that is not a database
        raise DatasetError(f"{where}: not an ASE database: {type(e).__name__}: {_first_line(e)}") from e
    try:
        rows = _select(db, query, kind)
    except Exception as e:
        raise DatasetError(f"{where}: bad selection query {query!r}: {type(e).__name__}: {_first_line(e)}") from e
    if not rows:
        raise DatasetError(f"{where}: " + (f"the selection {query!r} matched no rows (the database has {total})"
                                           if query else "no rows (empty database)"))
    frames = [row.toatoms() for row in rows]
    ids = [row.id for row in rows]

    def labels(k, atoms):
        row = rows[k]
        data = row.data if hasattr(row, "data") else {}
        if "REF_energy" in data:
            e = data["REF_energy"]
        elif row.get("energy") is not None:
            e = row.energy
        else:
            raise DatasetError(f"{where}: frame {k} (row id {ids[k]}) has no energy (expected data REF_energy "
                               f"or calculator energy)")
        if "REF_forces" in data:
            f = data["REF_forces"]
        elif row.get("forces") is not None:
            f = row.forces
        else:
            raise DatasetError(f"{where}: frame {k} (row id {ids[k]}) has no forces (expected data REF_forces "
                               f"or calculator forces)")
        return _scalar_energy(e, where, k), f

    ds = _from_frames(where, frames, labels)
    ds.name = path.stem
    theory = rows[0].get("theory") or (db.metadata or {}).get("theory")
    ds.theory = str(theory) if theory else "unknown"
    if query:
        ds.metadata["selection"] = query
    return ds
