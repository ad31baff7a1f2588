"""Molecular data sets (one molecule, many frames): loading, validation, units, splits, saving.

Formats: MD17 npz (R, z, E, F), rMD17 npz (coords, nuclear_charges, energies, forces), and anything ASE
reads (extxyz with REF_energy/REF_forces or calculator results).  Every problem is reported as a
`DatasetError` naming the file and the field *before* any training starts.
"""
from __future__ import annotations

import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import units

__all__ = ["DatasetError", "MoleculeDataset", "load_dataset", "save_npz", "split_indices",
           "ENERGY_UNITS", "BUNDLED_DATA_DIR", "BUNDLED_DATASETS", "DEFAULT_DATASET", "MIN_DISTANCE",
           "resolve_dataset", "to_energy_unit"]

ENERGY_UNITS = ("kcal/mol", "eV")
# eV per unit
_EV_PER = {"eV": 1.0, "kcal/mol": units.kcal / units.mol}

BUNDLED_DATA_DIR = Path(__file__).resolve().parents[2] / "data"
# bundled data sets by name (see data/README.md); `resolve_dataset` maps a name or a path to a file
BUNDLED_DATASETS = {
    "ethanol": BUNDLED_DATA_DIR / "ethanol-gfn2-500K.npz",
    "aspirin": BUNDLED_DATA_DIR / "aspirin-gfn2-500K.npz",
}
DEFAULT_DATASET = BUNDLED_DATASETS["ethanol"]
# two atoms closer than this (Å) in a frame cannot be physical (shortest real bond, H2: 0.74 Å)
MIN_DISTANCE = 0.1

_MD17_KEYS = ("R", "z", "E", "F")
_RMD17_KEYS = ("coords", "nuclear_charges", "energies", "forces")


class DatasetError(ValueError):
    """A data file that cannot be used, with the file and the problem in the message."""


def npz_error(path, error: Exception) -> DatasetError:
    """Why numpy could not read an npz, in words that fit the cause: object arrays (they need pickle, which
    untrusted files never get) or a damaged, cut-off member (numpy says ValueError for both)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, ValueError) and ("allow_pickle" in text or "Object arrays" in text):
        return DatasetError(f"{path}: unreadable npz (pickled objects are not accepted): {text}")
    if isinstance(error, ValueError):
        return DatasetError(f"{path}: unreadable npz (a damaged or cut-off array): {text}")
    return DatasetError(f"{path}: unreadable npz: {type(error).__name__}: {text}")


class SplitSizeError(ValueError):
    """The split asks for more frames than the data set has (a refusal whose advice is: fewer, or more data)."""


@dataclass
class MoleculeDataset:
    """Frames of one molecule. positions/forces in Å and `energy_unit`/Å; energies in `energy_unit`."""

    positions: np.ndarray  # [n, N, 3] float64, Å
    numbers: np.ndarray  # [N] int64
    energies: np.ndarray  # [n] float64
    forces: np.ndarray  # [n, N, 3] float64
    energy_unit: str = "kcal/mol"
    theory: str = "unknown"
    name: str = ""
    source: str = ""
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.energies.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def force_unit(self) -> str:
        return f"{self.energy_unit}/Å"

    def check_numbers(self, max_z: int) -> None:
        """Refuse atomic numbers a model cannot embed: `max_z` is the model's embedding size
        (`nn.Embedding(max_z, ...)`, as in SchNet/CGCNN's `max_z=100`), so numbers up to max_z − 1 fit."""
        too_big = np.flatnonzero(self.numbers >= max_z)
        if too_big.size:
            i = int(too_big[0])
            more = f" ({too_big.size} atoms in all)" if too_big.size > 1 else ""
            raise DatasetError(f"{self.source or self.name}: atomic number {int(self.numbers[i])} at atom {i} "
                               f"exceeds the model's embedding size (max {max_z - 1}, max_z={max_z}){more}")

    def subset(self, index: np.ndarray) -> "MoleculeDataset":
        return MoleculeDataset(self.positions[index], self.numbers, self.energies[index],
                               self.forces[index], self.energy_unit, self.theory, self.name,
                               self.source, dict(self.metadata))


def to_energy_unit(value: np.ndarray | float, from_unit: str, to_unit: str):
    """Convert energies (or forces per Å) between kcal/mol and eV."""
    return value * (_EV_PER[from_unit] / _EV_PER[to_unit])


def _str(x, path: str = "", key: str = "") -> str:
    """A text field of an npz (a 0-d array, or the first element of a 1-d one); an empty one is refused."""
    a = np.asarray(x)
    if a.size == 0:
        raise DatasetError(f"{path}: field {key!r} is an empty array (expected a text such as "
                           f"{'kcal/mol' if key == 'energy_unit' else 'a name'})")
    return str(a.item()) if a.shape == () else str(a.ravel()[0])


def _coincident_atoms(positions: np.ndarray, min_distance: float = MIN_DISTANCE):
    """First (frame, i, j, distance, frames affected) with two atoms closer than min_distance, else None.

    All pair distances, in chunks of frames so memory stays ≈ 32 MB whatever the data set's size."""
    n, n_atoms, _ = positions.shape
    if n_atoms < 2:
        return None
    iu, ju = np.triu_indices(n_atoms, k=1)
    chunk = max(1, 4_000_000 // (iu.size * 3))
    first, n_bad = None, 0
    for start in range(0, n, chunk):
        r = positions[start:start + chunk]
        d2 = ((r[:, iu] - r[:, ju]) ** 2).sum(axis=-1)  # [frames, pairs]
        bad = d2 < min_distance ** 2
        rows = bad.any(axis=1)
        n_bad += int(rows.sum())
        if first is None and rows.any():
            f = int(np.argmax(rows))
            p = int(np.argmax(bad[f]))
            first = (start + f, int(iu[p]), int(ju[p]), float(np.sqrt(d2[f, p])))
    return None if first is None else (*first, n_bad)


def _validate(path: str, positions, numbers, energies, forces, energy_unit: str) -> MoleculeDataset:
    def fail(msg: str):
        raise DatasetError(f"{path}: {msg}")

    positions, numbers, energies, forces = map(np.asarray, (positions, numbers, energies, forces))
    if energy_unit not in ENERGY_UNITS:
        fail(f"energy unit {energy_unit!r} is not one of {ENERGY_UNITS}")
    for label, arr in (("positions", positions), ("atomic numbers", numbers), ("energies", energies),
                       ("forces", forces)):
        # refused outright, even with all imaginary parts zero: complex labels are never physical data
        if np.iscomplexobj(arr):
            imag = np.imag(arr) != 0
            where = ", all imaginary parts zero"
            if imag.any():
                where = ", nonzero imaginary parts"
                if arr.ndim:
                    first = int(np.unravel_index(int(np.argmax(imag)), arr.shape)[0])
                    where += f" first at {'atom' if label == 'atomic numbers' else 'frame'} {first}"
            fail(f"{label} are complex numbers (dtype {arr.dtype}{where}); expected real numbers")
    if positions.ndim != 3 or positions.shape[-1] != 3:
        fail(f"positions must have shape [frames, atoms, 3], got {list(positions.shape)}")
    n, n_atoms, _ = positions.shape
    if n == 0:
        fail("no frames (empty data set)")
    if n_atoms == 0:
        fail("no atoms")
    if numbers.ndim != 1:
        fail(f"atomic numbers must be one list [atoms] shared by all frames, got shape {list(numbers.shape)}")
    if numbers.shape[0] != n_atoms:
        fail(f"wrong atom count: {numbers.shape[0]} atomic numbers but positions have {n_atoms} atoms")
    if not np.issubdtype(numbers.dtype, np.number) or not np.all(np.isfinite(numbers)) \
            or not np.all(np.equal(np.mod(numbers, 1), 0)):
        fail(f"atomic numbers must be integers, got {numbers.tolist()[:10]} (dtype {numbers.dtype})")
    numbers = numbers.astype(np.int64)
    if numbers.min() < 1 or numbers.max() > 118:
        fail(f"atomic numbers must lie in 1..118, got min {numbers.min()} max {numbers.max()}")
    energies = energies.reshape(-1) if energies.ndim == 2 and energies.shape[1] == 1 else energies
    if energies.shape != (n,):
        fail(f"energies must have shape [{n}] (one per frame), got {list(energies.shape)}")
    if forces.shape != positions.shape:
        fail(f"forces must have the shape of positions {list(positions.shape)}, got {list(forces.shape)}")
    for label, arr in (("positions", positions), ("energies", energies), ("forces", forces)):
        if not np.issubdtype(arr.dtype, np.number):
            fail(f"{label} are not numbers (dtype {arr.dtype})")
        bad = ~np.isfinite(arr.reshape(n, -1)).all(axis=1)
        if bad.any():
            fail(f"{label} contain NaN/inf in {int(bad.sum())} frame(s), first at frame {int(np.argmax(bad))}")
    close = _coincident_atoms(positions)
    if close is not None:
        frame, i, j, d, n_bad = close
        fail(f"positions: atoms {i} and {j} (Z={numbers[i]}, {numbers[j]}) are {d:.3g} Å apart in frame {frame} "
             f"(closer than {MIN_DISTANCE} Å: not a physical geometry; {n_bad} frame(s) affected)")
    return MoleculeDataset(positions.astype(np.float64), numbers, energies.astype(np.float64),
                           forces.astype(np.float64), energy_unit, source=path)


def _load_npz(path: str) -> MoleculeDataset:
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head[:4] != b"PK\x03\x04":  # an npz is a zip archive; anything else (text, a lone .npy, a pickle) is not
        what = "a single .npy array" if head == b"\x93NUMPY" else (
            "a pickle" if head[:1] == b"\x80" else f"a file starting with {head!r}")
        raise DatasetError(f"{path}: not an npz archive (an npz is a zip file of arrays: R, z, E, F); this is {what}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # object arrays (they need pickle: refused), a damaged member, not a zip
        raise npz_error(path, e) from e
    if all(k in arrays for k in _MD17_KEYS):
        keys = _MD17_KEYS
    elif all(k in arrays for k in _RMD17_KEYS):
        keys = _RMD17_KEYS
    else:
        missing_md17 = [k for k in _MD17_KEYS if k not in arrays]
        raise DatasetError(
            f"{path}: missing keys {missing_md17} (MD17 layout R, z, E, F) — or, for rMD17, "
            f"{[k for k in _RMD17_KEYS if k not in arrays]}; found {sorted(arrays)}")
    unit = _str(arrays["energy_unit"], path, "energy_unit") if "energy_unit" in arrays else "kcal/mol"  # MD17's
    ds = _validate(path, *(arrays[k] for k in keys), energy_unit=unit)
    ds.theory = _str(arrays["theory"], path, "theory") if "theory" in arrays else "unknown"
    ds.name = _str(arrays["name"], path, "name") if "name" in arrays else Path(path).stem
    ds.metadata = {k: _str(v) for k, v in arrays.items()
                   if k not in keys and k not in ("theory", "name") and np.asarray(v).size == 1}
    return ds


def _load_ase(path: str) -> MoleculeDataset:
    from ase.io import read

    try:
        frames = read(path, index=":")
    except Exception as e:
        raise DatasetError(f"{path}: unreadable by ASE: {type(e).__name__}: {e}") from e
    if not frames:
        raise DatasetError(f"{path}: no frames (empty data set)")
    numbers = frames[0].numbers
    energies, forces, positions = [], [], []
    for k, atoms in enumerate(frames):
        if len(atoms) != len(numbers) or not np.array_equal(atoms.numbers, numbers):
            raise DatasetError(f"{path}: frame {k} has atoms {atoms.get_chemical_formula()} but frame 0 "
                               f"has {frames[0].get_chemical_formula()} (one molecule per data set)")
        if "REF_energy" in atoms.info:
            energies.append(atoms.info["REF_energy"])
        elif atoms.calc is not None and "energy" in atoms.calc.results:
            energies.append(atoms.calc.results["energy"])
        else:
            raise DatasetError(f"{path}: frame {k} has no energy (expected REF_energy or energy)")
        if "REF_forces" in atoms.arrays:
            forces.append(atoms.arrays["REF_forces"])
        elif atoms.calc is not None and "forces" in atoms.calc.results:
            forces.append(atoms.calc.results["forces"])
        else:
            raise DatasetError(f"{path}: frame {k} has no forces (expected REF_forces or forces)")
        positions.append(atoms.positions)
    ds = _validate(path, np.stack(positions), numbers, np.asarray(energies, dtype=float),
                   np.stack(forces), energy_unit="eV")
    ds.name = frames[0].get_chemical_formula()
    ds.theory = str(frames[0].info.get("theory", "unknown"))
    return ds


def resolve_dataset(name_or_path: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """The data file for a bundled name (`BUNDLED_DATASETS`: "ethanol", "aspirin") or a path.

    A path is expanded (~) and, if relative, taken relative to `base` (default: the current directory);
    the result is absolute (Ray trials change directory).  Raises DatasetError naming the value and the
    known names when it is neither a bundled name nor an existing file or directory."""
    value = os.fspath(name_or_path)
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if value in BUNDLED_DATASETS:
        return BUNDLED_DATASETS[value]
    path = Path(value).expanduser()
    if value.strip() and not path.is_absolute():
        path = Path(base if base is not None else os.getcwd()).expanduser() / path
    if not value.strip() or not path.exists():
        where = f" (looked for {path})" if value.strip() else ""
        raise DatasetError(f"data set {value!r} is neither a bundled data set ({', '.join(BUNDLED_DATASETS)}) "
                           f"nor an existing file{where}")
    return path.absolute()


def load_dataset(path: str | os.PathLike, max_z: int | None = None) -> MoleculeDataset:
    """Load and validate a data set (a file, or a bundled name such as "aspirin"); raises DatasetError
    naming the file and the problem.

    With `max_z` (a model's embedding size), also refuses atomic numbers the model cannot embed."""
    ds = _load(BUNDLED_DATASETS.get(os.fspath(path), path))
    if max_z is not None:
        ds.check_numbers(max_z)
    return ds


def _load(path: str | os.PathLike) -> MoleculeDataset:
    path = str(Path(path).expanduser())
    if not os.path.exists(path):
        raise DatasetError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DatasetError(f"{path}: is a directory, expected a data file")
    if os.path.getsize(path) == 0:
        raise DatasetError(f"{path}: empty file")
    with open(path, "rb") as fh:
        is_zip = fh.read(4) == b"PK\x03\x04"
    if path.endswith(".npz") or is_zip:
        return _load_npz(path)
    return _load_ase(path)


def split_indices(n: int, seed: int, n_train: int | None = None, n_val: int | None = None,
                  n_test: int | None = None, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)):
    """Seeded random (train, val, test) indices: fixed counts where given, else fractions of n."""
    counts = [n_train, n_val, n_test]
    defaults = [int(round(f * n)) for f in fractions]
    counts = [d if c is None else int(c) for c, d in zip(counts, defaults)]
    if any(c < 0 for c in counts) or counts[0] == 0 or counts[1] == 0:
        raise ValueError(f"split sizes must be non-negative with n_train, n_val > 0, got {counts}")
    if sum(counts) > n:
        raise SplitSizeError(f"split sizes {counts} need {sum(counts)} frames but the data set has {n}")
    perm = np.random.default_rng(seed).permutation(n)
    a, b = counts[0], counts[0] + counts[1]
    return perm[:a], perm[a:b], perm[b:b + counts[2]]


def save_npz(path: str | os.PathLike, ds: MoleculeDataset, extra: dict | None = None) -> None:
    """Write the MD17 layout (R, z, E, F + theory, name, units) byte-for-byte reproducibly.

    np.savez stamps the current time into the zip; we write fixed timestamps so the same data gives the
    same file (a checksum in data/README.md can then be checked).  Written to a temp file and renamed.
    """
    arrays = {"R": ds.positions, "z": ds.numbers, "E": ds.energies, "F": ds.forces,
              "theory": np.array(ds.theory), "name": np.array(ds.name),
              "energy_unit": np.array(ds.energy_unit), "force_unit": np.array(ds.force_unit),
              "length_unit": np.array("Å")}
    for k, v in (extra or {}).items():
        arrays[k] = np.asarray(v)
    write_npz_deterministic(path, arrays)


def write_npz_deterministic(path: str | os.PathLike, arrays: dict) -> None:
    """Write `arrays` as an npz whose bytes depend on the arrays only (sorted keys, fixed timestamps and
    modes, no pickles), atomically (a temporary file, then rename): what lets `make data` regenerate the
    bundled files bit for bit."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    os.replace(tmp, path)
