"""Neighbour lists with periodic images (vesin), per frame and for a whole data set (cached).

Convention (ASE's and vesin's): pair (i, j, S) means r_ij = x_j − x_i + S·cell, with S [3] integer cell
shifts (S·cell = Σ_a S_a · cell[a], cell rows = cell vectors).  Every ordered pair within the cutoff is
listed (full list: both (i, j, S) and (j, i, −S)), periodic images included — a cell smaller than the
cutoff gives an atom many images of the same neighbour, and even of itself (i = i, S ≠ 0) — and never the
self pair at zero shift.  Positions need not be wrapped into the cell.

vesin (Luthaf & al., a C++ cell list made for this) is ≈ 20–100 µs a frame for tens of atoms here; it
handles mixed periodicity (slabs: pbc = (T, T, F); vesin ≥ 0.4) and non-periodic frames (no cell needed).  Lists are
sorted by (i, j), so the same input always gives the same order (one thread, deterministic).
"""
from __future__ import annotations

import hashlib
import inspect
import os
from pathlib import Path

import numpy as np

from dcnn.atomistic.dataset import AtomsDataset, concat_ranges, offsets_from_counts

__all__ = ["neighbor_list", "paired", "DatasetNeighbors", "cache_dir", "content_hash"]

# bump when the stored arrays change meaning: old cache files are then never read
_CACHE_VERSION = 2  # 2: each frame's list paired (one direction of every pair, then the reverses)
_CALCULATORS: dict[float, object] = {}


def _calculator(cutoff: float):
    """One vesin NeighborList per cutoff (construction is cheap, but reuse keeps it out of loops)."""
    from vesin import NeighborList

    nl = _CALCULATORS.get(cutoff)
    if nl is None:
        # n_threads=1 where this vesin takes it: a Ray trial owns one CPU thread (trainables/dcnn_trainables.py sets its threads)
        threads = {"n_threads": 1} if "n_threads" in inspect.signature(NeighborList).parameters else {}
        nl = _CALCULATORS[cutoff] = NeighborList(cutoff=cutoff, full_list=True, sorted=True, **threads)
    return nl


def neighbor_list(positions: np.ndarray, cell: np.ndarray | None, pbc, cutoff: float,
                  distances: bool = False):
    """(i [E], j [E], S [E, 3]) int64 of every ordered pair closer than `cutoff` Å, with integer cell shifts
    such that r_ij = x_j − x_i + S·cell; with `distances=True` also |r_ij| [E].

    `cell` [3, 3] (rows = vectors; zeros or None for a molecule), `pbc` a bool or 3 bools.  A non-periodic
    frame uses vesin's non-periodic mode: S is then all zero."""
    if not (isinstance(cutoff, (int, float)) and np.isfinite(cutoff) and cutoff > 0):
        raise ValueError(f"cutoff must be a positive finite number of Å, got {cutoff!r}")
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    box = np.zeros((3, 3)) if cell is None else np.ascontiguousarray(cell, dtype=np.float64)
    if len(positions) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return (empty, empty, np.zeros((0, 3), dtype=np.int64)) + ((np.zeros(0),) if distances else ())
    out = _calculator(float(cutoff)).compute(positions, box, pbc.tolist(), "ijSd" if distances else "ijS")
    i, j, s = (a.astype(np.int64) for a in out[:3])
    return (i, j, s, out[3]) if distances else (i, j, s)


def cache_dir() -> Path:
    """Where neighbour lists are kept on disk: $DCNN_CACHE, else ~/.cache/dcnn-ablate (as for the PINN
    references), in a `neighbors` folder."""
    return Path(os.environ.get("DCNN_CACHE") or Path.home() / ".cache" / "dcnn-ablate") / "neighbors"


def content_hash(dataset: AtomsDataset, cutoff: float) -> str:
    """sha256 of what a neighbour list depends on: positions, cells, pbc, frame offsets, the cutoff (and
    the cache format's version) — not the labels or atomic numbers, so relabelled data share lists."""
    h = hashlib.sha256(f"dcnn-neighbors v{_CACHE_VERSION} cutoff={float(cutoff)!r}".encode())
    for arr, dtype in ((dataset.offsets, np.int64), (dataset.positions, np.float64),
                       (dataset.cells, np.float64), (dataset.pbc, np.bool_)):
        a = np.ascontiguousarray(arr, dtype=dtype)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def paired(i: np.ndarray, j: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A full list reordered as [one direction of every pair; the reverse of each, in the same order]:
    edge m and edge m + E/2 are (i, j, S) and (j, i, −S).  Models use it to compute what is symmetric in a
    pair (a distance, SchNet's filter) once per pair and to find an edge's reverse (GemNet) by arithmetic.
    The first direction is i < j, or i = j (an image of itself) with the first non-zero shift positive."""
    first_nonzero = np.where(s != 0, s, 0)
    lead = np.take_along_axis(first_nonzero, np.argmax(s != 0, axis=1)[:, None], axis=1)[:, 0]
    forward = (i < j) | ((i == j) & (lead > 0))
    fi, fj, fs = i[forward], j[forward], s[forward]
    if 2 * len(fi) != len(i):
        raise ValueError(f"neighbour list is not symmetric: {len(i)} edges, {len(fi)} in one direction")
    return np.concatenate([fi, fj]), np.concatenate([fj, fi]), np.concatenate([fs, -fs])


class DatasetNeighbors:
    """The neighbour lists of every frame of one data set for one cutoff, computed once.

    Stored concatenated like the data set: `i`, `j` [E] int32 frame-local atom indices, `shifts` [E, 3]
    int32, `offsets` [n+1] (frame k = edges offsets[k]:offsets[k+1]); each frame's list `paired` (its
    first half one direction of every pair, its second half their reverses).  `cutoff` None: every
    ordered pair of atoms (`complete`, for fixed-size molecules: static shapes, and exactly the pairs
    the models' smooth cutoffs already switch off).  `collate` shifts them to batch
    indices.  `get` keeps recent lists in memory and, with `disk=True`, under `cache_dir()` keyed by
    `content_hash`, so a second trial on the same data (or a resumed one) does not recompute them.
    """

    _memory: dict[str, "DatasetNeighbors"] = {}
    _MEMORY_SIZE = 8  # lists kept per process (each ≈ 28 bytes per edge)

    def __init__(self, i: np.ndarray, j: np.ndarray, shifts: np.ndarray, offsets: np.ndarray,
                 cutoff: float | None, key: str = ""):
        self.i, self.j, self.shifts, self.offsets = i, j, shifts, offsets
        self.cutoff = None if cutoff is None else float(cutoff)
        self.key = key

    @classmethod
    def complete(cls, dataset: AtomsDataset) -> "DatasetNeighbors":
        """Every ordered pair i ≠ j of every frame, zero shifts (non-periodic frames only), paired: the
        layout of fixed-size molecules, where pairs beyond a model's cutoff are switched off by its smooth
        envelope, so energies equal a radius graph's while every batch has the same number of edges."""
        if dataset.is_periodic:
            raise ValueError("a complete graph is for non-periodic frames; periodic ones need a cutoff")
        parts_i, parts_j, counts = [], [], np.zeros(len(dataset), dtype=np.int64)
        tables: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for k, n in enumerate(dataset.n_atoms):
            if n not in tables:
                iu, ju = np.triu_indices(int(n), k=1)
                tables[n] = (np.concatenate([iu, ju]).astype(np.int32), np.concatenate([ju, iu]).astype(np.int32))
            parts_i.append(tables[n][0]), parts_j.append(tables[n][1])
            counts[k] = len(tables[n][0])
        i, j = (np.concatenate(p) if p else np.zeros(0, dtype=np.int32) for p in (parts_i, parts_j))
        return cls(i, j, np.zeros((len(i), 3), dtype=np.int32), offsets_from_counts(counts), None, "complete")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_edges(self) -> np.ndarray:
        """Edges per frame, [n] int64."""
        return np.diff(self.offsets)

    def subset(self, index: np.ndarray) -> "DatasetNeighbors":
        """The lists of frames `index` (in that order), as for `AtomsDataset.subset`."""
        index = np.asarray(index, dtype=np.int64)
        edges = concat_ranges(self.offsets[:-1][index], self.n_edges[index])
        return DatasetNeighbors(self.i[edges], self.j[edges], self.shifts[edges],
                                offsets_from_counts(self.n_edges[index]), self.cutoff, self.key)

    def frame(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(i, j, S) of frame k, frame-local atom indices, int64."""
        s = slice(int(self.offsets[k]), int(self.offsets[k + 1]))
        return self.i[s].astype(np.int64), self.j[s].astype(np.int64), self.shifts[s].astype(np.int64)

    @classmethod
    def compute(cls, dataset: AtomsDataset, cutoff: float, key: str = "") -> "DatasetNeighbors":
        """Every frame's list (one vesin call per frame: no per-atom Python work)."""
        parts_i, parts_j, parts_s, counts = [], [], [], np.zeros(len(dataset), dtype=np.int64)
        for k in range(len(dataset)):
            s = dataset.frame_slice(k)
            i, j, shift = paired(*neighbor_list(dataset.positions[s], dataset.cells[k], dataset.pbc[k], cutoff))
            parts_i.append(i.astype(np.int32))
            parts_j.append(j.astype(np.int32))
            parts_s.append(shift.astype(np.int32))
            counts[k] = len(i)
        cat = (lambda parts, shape: np.concatenate(parts) if parts else np.zeros(shape, dtype=np.int32))
        return cls(cat(parts_i, (0,)), cat(parts_j, (0,)), cat(parts_s, (0, 3)).reshape(-1, 3),
                   offsets_from_counts(counts), cutoff, key)

    @classmethod
    def get(cls, dataset: AtomsDataset, cutoff: float, disk: bool = False) -> "DatasetNeighbors":
        """The lists for (dataset, cutoff): from memory, else from disk (`disk=True`), else computed."""
        key = content_hash(dataset, cutoff)
        hit = cls._memory.get(key)
        if hit is None and disk:
            hit = cls._load(cache_dir() / f"{key}.npz", key, len(dataset), cutoff)
        if hit is None:
            hit = cls.compute(dataset, cutoff, key)
            if disk:
                hit._save(cache_dir() / f"{key}.npz")
        cls._memory.pop(key, None)
        cls._memory[key] = hit  # most recent last
        while len(cls._memory) > cls._MEMORY_SIZE:
            cls._memory.pop(next(iter(cls._memory)))
        return hit

    def _save(self, path: Path) -> None:
        """Atomic write (temp file + rename): a crash never leaves a half-written cache file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.savez(fh, i=self.i, j=self.j, shifts=self.shifts, offsets=self.offsets,
                     cutoff=np.float64(self.cutoff))
        os.replace(tmp, path)

    @classmethod
    def _load(cls, path: Path, key: str, n_frames: int, cutoff: float) -> "DatasetNeighbors | None":
        """A cached list, or None when absent or damaged (a cache is never a reason to fail: recompute)."""
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as f:
                i, j, shifts, offsets = f["i"], f["j"], f["shifts"], f["offsets"]
                stored_cutoff = float(f["cutoff"])
        except Exception:
            return None
        e = len(i)
        if (offsets.shape != (n_frames + 1,) or offsets[0] != 0 or offsets[-1] != e or j.shape != (e,)
                or shifts.shape != (e, 3) or stored_cutoff != float(cutoff) or np.any(np.diff(offsets) < 0)):
            return None
        return cls(i, j, shifts, offsets, cutoff, key)
