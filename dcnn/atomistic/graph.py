"""The one batch representation every model takes (`AtomicGraph`), how frames become one (`collate`), and
the edge pairs angular models need (`triplets`).

A batch is the disjoint union of its frames' graphs, as in PyG and fairchem: atoms concatenated, `batch`
names each atom's structure, edges carry global atom indices and integer cell shifts.  Edge vectors are
computed from positions and cells at use time, never stored, so forces (−∂E/∂positions) and, later, the
stress (∂E/∂strain applied to positions and cells together) come from autograd through one function.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch

from dcnn.atomistic.dataset import AtomsDataset, concat_ranges, offsets_from_counts
from dcnn.atomistic.neighbors import DatasetNeighbors

__all__ = ["AtomicGraph", "collate", "triplets", "molecule_graph", "GraphStore"]


@dataclass
class AtomicGraph:
    """B structures as one graph.  Edge e goes from source j = edge_index[0, e] to target i =
    edge_index[1, e] (messages flow j → i, PyG's "source_to_target"), with r_ij = x_j − x_i + S_e·cell."""

    positions: torch.Tensor  # [A, 3] a leaf: the trainer sets requires_grad for forces
    numbers: torch.Tensor  # [A] long
    batch: torch.Tensor  # [A] long, structure of each atom
    n_structures: int
    edge_index: torch.Tensor  # [2, E] long, row 0 = source j, row 1 = target i (global atom indices)
    cell_shifts: torch.Tensor  # [E, 3] integer shifts S, stored in the float dtype (they multiply cells)
    cells: torch.Tensor  # [B, 3, 3] rows = cell vectors (zeros for a molecule)
    n_atoms: torch.Tensor  # [B] long
    pbc: torch.Tensor | None = None  # [B, 3] bool
    # index tables a model derives from the edges (triplets, ...), made outside the differentiable step by
    # the model's `prepare_graph(graph)` (the task calls it after collate): traced compiled steps see them
    # as inputs of fixed shape instead of data-dependent ops
    extras: dict = field(default_factory=dict)
    # whether any structure has a periodic axis; a molecule's graph skips the (zero) cell shifts entirely
    periodic: bool = True

    @property
    def n_edges(self) -> int:
        """The edge count (a symbolic size while `dcnn.compiled` traces for batches of any size: no `int()`)."""
        return self.edge_index.shape[1]

    @property
    def n_pairs(self) -> int:
        """Edges come paired: edge m and edge m + n_pairs are reverses of each other (collate's order)."""
        return self.n_edges // 2

    def reverse_edges(self) -> torch.Tensor:
        """[E]: the index of each edge's reverse."""
        e = torch.arange(self.n_edges, device=self.edge_index.device)
        return torch.where(e < self.n_pairs, e + self.n_pairs, e - self.n_pairs)

    def edge_vectors(self, edges: slice | None = None) -> torch.Tensor:
        """r_ij = x_j − x_i + S_ij·cell[batch[i]], [E, 3] (or of `edges`, e.g. the first P: one per pair);
        differentiable w.r.t. positions and cells."""
        source, target = self.edge_index if edges is None else self.edge_index[:, edges]
        r = self.positions[source] - self.positions[target]
        if not self.periodic:
            return r
        shifts = self.cell_shifts if edges is None else self.cell_shifts[edges]
        return r + torch.einsum("ek,ekl->el", shifts, self.cells[self.batch[target]])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AtomicGraph":
        """A copy on `device`; floating tensors (positions, cells, cell_shifts) in `dtype`."""
        f = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        i = lambda t: t.to(device=device)  # noqa: E731
        return AtomicGraph(f(self.positions), i(self.numbers), i(self.batch), self.n_structures,
                           i(self.edge_index), f(self.cell_shifts), f(self.cells), i(self.n_atoms),
                           None if self.pbc is None else i(self.pbc),
                           {k: (f(v) if v.is_floating_point() else i(v)) for k, v in self.extras.items()},
                           self.periodic)


def collate(dataset: AtomsDataset, neighbors: DatasetNeighbors, index, device: torch.device | str = "cpu",
            dtype: torch.dtype = torch.float32) -> tuple[AtomicGraph, torch.Tensor, torch.Tensor]:
    """Frames `index` of `dataset` as one AtomicGraph, with their energies [B] and forces [A, 3] (labels as
    stored: the label transform is the task's job).  Atom and edge gathers are `concat_ranges` index
    arrays, edge indices are shifted by each frame's offset in the batch: no Python loop at all."""
    if len(neighbors) != len(dataset):
        raise ValueError(f"neighbour lists are for {len(neighbors)} frames but the data set has {len(dataset)}")
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    sizes = dataset.n_atoms[index]
    atoms = concat_ranges(dataset.offsets[:-1][index], sizes)
    batch_offsets = offsets_from_counts(sizes)  # where each frame's atoms start in the batch
    # each frame's list is paired ([one direction; reverses]): the batch's too, [all first halves; all
    # reverses, in the same order], so edge m and m + E/2 are each other's reverse over the whole batch
    half = neighbors.n_edges[index] // 2
    starts = neighbors.offsets[:-1][index]
    edges = np.concatenate([concat_ranges(starts, half), concat_ranges(starts + half, half)])
    edge_shift = np.tile(np.repeat(batch_offsets[:-1], half), 2)
    target = neighbors.i[edges].astype(np.int64) + edge_shift
    source = neighbors.j[edges].astype(np.int64) + edge_shift

    def t(a, dt):
        return torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dt)

    graph = AtomicGraph(
        positions=t(dataset.positions[atoms], dtype), numbers=t(dataset.numbers[atoms], torch.long),
        batch=t(np.repeat(np.arange(len(index), dtype=np.int64), sizes), torch.long), n_structures=len(index),
        edge_index=t(np.stack([source, target]), torch.long), cell_shifts=t(neighbors.shifts[edges], dtype),
        cells=t(dataset.cells[index], dtype), n_atoms=t(sizes, torch.long), pbc=t(dataset.pbc[index], torch.bool),
        periodic=bool(dataset.pbc[index].any()))
    return graph, t(dataset.energies[index], dtype), t(dataset.forces[atoms], dtype)


def triplets(edge_index: torch.Tensor, n_atoms_total: int,
             cell_shifts: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(idx_kj, idx_ji): every pair of edges k → j and j → i (the edge into j, then the edge out of j),
    with the back-track k = i excluded — DimeNet++'s and GemNet's angle triplets.

    Without `cell_shifts`, k ≠ i by atom index (molecules; what PyG's DimeNet does).  With them (periodic
    graphs) only the same physical atom is excluded: k = i and S_kj + S_ji = 0; k may be another image of
    i.  Vectorised: incoming edges grouped by target (stable sort), each edge j → i repeated once per edge
    into j (repeat_interleave), then the back-tracks masked."""
    source, target = edge_index[0], edge_index[1]
    n_edges = source.shape[0]
    order = torch.argsort(target, stable=True)  # edges grouped by the atom they point into
    into = torch.bincount(target, minlength=n_atoms_total)  # [A] edges into each atom
    start = torch.cumsum(into, 0) - into  # first position in `order` of the edges into each atom
    repeats = into[source]  # edge j → i pairs with every edge k → j: deg_in(j) times
    idx_ji = torch.repeat_interleave(torch.arange(n_edges, device=source.device), repeats)
    group_start = torch.cumsum(repeats, 0) - repeats
    local = torch.arange(idx_ji.shape[0], device=source.device) - torch.repeat_interleave(group_start, repeats)
    idx_kj = order[torch.repeat_interleave(start[source], repeats) + local]
    back = source[idx_kj] == target[idx_ji]
    if cell_shifts is not None:
        back = back & torch.all(cell_shifts[idx_kj] + cell_shifts[idx_ji] == 0, dim=1)
    keep = ~back
    return idx_kj[keep], idx_ji[keep]


def molecule_graph(positions: torch.Tensor, numbers: torch.Tensor, cutoff: float | None = None) -> AtomicGraph:
    """B frames of one molecule, `positions` [B, N, 3] and `numbers` [N], as an AtomicGraph: every ordered
    pair (cutoff None: the complete graph fixed-size molecules train on) or the pairs closer than `cutoff`
    in each frame, paired as `collate` pairs them.  The positions stay the caller's (a view, so gradients
    w.r.t. them flow): for calculators, benchmarks and checks that hold molecules as dense arrays."""
    b, n, _ = positions.shape
    device = positions.device
    iu, ju = torch.triu_indices(n, n, offset=1, device=device)
    offsets = torch.arange(b, device=device).repeat_interleave(iu.numel()) * n
    first_i, first_j = iu.repeat(b) + offsets, ju.repeat(b) + offsets
    if cutoff is not None:
        d = (positions.detach()[:, ju] - positions.detach()[:, iu]).norm(dim=-1).reshape(-1)
        keep = d < cutoff
        first_i, first_j = first_i[keep], first_j[keep]
    # paired: (i → j) for every pair first, then the reverses (source j = edge_index[0], target i = [1])
    edge_index = torch.stack([torch.cat([first_j, first_i]), torch.cat([first_i, first_j])])
    return AtomicGraph(positions=positions.reshape(b * n, 3), numbers=numbers.repeat(b),
                       batch=torch.arange(b, device=device).repeat_interleave(n), n_structures=b,
                       edge_index=edge_index,
                       cell_shifts=torch.zeros(edge_index.shape[1], 3, dtype=positions.dtype, device=device),
                       cells=torch.zeros(b, 3, 3, dtype=positions.dtype, device=device),
                       n_atoms=torch.full((b,), n, device=device, dtype=torch.long), periodic=False)


def _ranges(starts: torch.Tensor, lengths: torch.Tensor, total: int) -> torch.Tensor:
    """torch `concat_ranges` with the output size given (known on the host: no device sync)."""
    first = torch.cumsum(lengths, 0) - lengths
    return torch.arange(total, device=starts.device) + torch.repeat_interleave(starts - first, lengths,
                                                                               output_size=total)


class GraphStore:
    """One split's frames and their neighbour lists as tensors on the training device, and batches of them
    made there (index arithmetic on the device: no host→device copy per step, no per-atom Python).

    Holds positions, numbers, cells, pbc, the paired edge lists, physical labels, the training labels of a
    label transform and the frames' composition counts.  `batch(index)` returns the AtomicGraph of frames
    `index` (a 1-D long tensor on the device; `sizes` of those frames on the host, from the numpy index
    the trainer draws, so no size is read back from the device)."""

    def __init__(self, dataset: AtomsDataset, neighbors: DatasetNeighbors, device, dtype,
                 energy_labels: np.ndarray, force_labels: np.ndarray, counts: np.ndarray):
        t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a)).to(device=device, dtype=dt)  # noqa: E731
        self.device, self.dtype = torch.device(device), dtype
        self.n_frames = len(dataset)
        self.n_atoms_host = dataset.n_atoms.astype(np.int64)
        self.half_edges_host = (neighbors.n_edges // 2).astype(np.int64)
        self.positions = t(dataset.positions, dtype)
        self.numbers = t(dataset.numbers, torch.long)
        self.cells, self.pbc = t(dataset.cells, dtype), t(dataset.pbc, torch.bool)
        self.atom_starts = t(dataset.offsets[:-1], torch.long)
        self.n_atoms = t(dataset.n_atoms, torch.long)
        self.edge_starts = t(neighbors.offsets[:-1], torch.long)
        self.half_edges = t(self.half_edges_host, torch.long)
        self.edge_i, self.edge_j = t(neighbors.i, torch.long), t(neighbors.j, torch.long)
        self.shifts = t(neighbors.shifts, dtype)
        self.energies, self.forces = t(dataset.energies, dtype), t(dataset.forces, dtype)
        self.energy_labels, self.force_labels = t(energy_labels, dtype), t(force_labels, dtype)
        self.counts = t(counts, dtype)
        self.periodic = bool(dataset.pbc.any())
        # one molecule on its complete graph: every batch of B frames has the same edges, so its structure is
        # made once per B and only positions and labels are gathered per step (as cheap as the dense layout)
        self.uniform = (dataset.fixed_size and not self.periodic and len(dataset) > 0
                        and bool(np.all(neighbors.n_edges == neighbors.n_edges[0]))
                        and np.array_equal(neighbors.frame(0)[0], neighbors.frame(len(dataset) - 1)[0]))
        self._structure: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.n_frames

    def _uniform_batch(self, index: torch.Tensor, b: int) -> dict:
        n = int(self.n_atoms_host[0])
        s = self._structure.get(b)
        if s is None:  # the structure of any b frames of the molecule: made once
            host = np.arange(b)
            s = self._structure[b] = self._general(torch.as_tensor(host, device=self.device), host)
        per_atom = lambda t: t.view(self.n_frames, n, *t.shape[1:])[index].reshape(b * n, *t.shape[1:])  # noqa: E731
        graph = dataclasses.replace(s["graph"], positions=per_atom(self.positions), numbers=per_atom(self.numbers))
        return {"graph": graph, "energies": self.energies[index], "forces": per_atom(self.forces),
                "energy_labels": self.energy_labels[index], "force_labels": per_atom(self.force_labels),
                "counts": self.counts[index], "n_atoms": s["n_atoms"]}

    def batch(self, index: torch.Tensor, host_index: np.ndarray) -> dict:
        """{"graph", "energies", "forces", "energy_labels", "force_labels", "counts", "n_atoms"} of the
        frames `index` (device) = `host_index` (the same frames as a numpy array)."""
        if self.uniform:
            return self._uniform_batch(index, len(host_index))
        return self._general(index, host_index)

    def _general(self, index: torch.Tensor, host_index: np.ndarray) -> dict:
        sizes = self.n_atoms[index]
        n_atoms_total = int(self.n_atoms_host[host_index].sum())
        half_host = self.half_edges_host[host_index]
        n_half = int(half_host.sum())
        atoms = _ranges(self.atom_starts[index], sizes, n_atoms_total)
        half = self.half_edges[index]
        starts = self.edge_starts[index]
        edges = torch.cat([_ranges(starts, half, n_half), _ranges(starts + half, half, n_half)])
        first_atom = torch.cumsum(sizes, 0) - sizes  # each frame's first atom in the batch
        shift = torch.repeat_interleave(first_atom, half, output_size=n_half).repeat(2)
        graph = AtomicGraph(
            positions=self.positions[atoms], numbers=self.numbers[atoms],
            batch=torch.repeat_interleave(torch.arange(len(host_index), device=self.device), sizes,
                                          output_size=n_atoms_total),
            n_structures=len(host_index),
            edge_index=torch.stack([self.edge_j[edges] + shift, self.edge_i[edges] + shift]),
            cell_shifts=self.shifts[edges], cells=self.cells[index], n_atoms=sizes, pbc=self.pbc[index],
            periodic=self.periodic)
        return {"graph": graph, "energies": self.energies[index], "forces": self.forces[atoms],
                "energy_labels": self.energy_labels[index], "force_labels": self.force_labels[atoms],
                "counts": self.counts[index], "n_atoms": sizes}
