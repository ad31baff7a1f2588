"""Neighbour lists (vesin vs ASE), the per-data-set cache, collate/AtomicGraph edge vectors, triplets."""
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.geometry import find_mic
from ase.neighborlist import neighbor_list as ase_neighbor_list

from dcnn.atomistic.dataset import AtomsDataset, offsets_from_counts
from dcnn.atomistic.graph import collate, triplets
from dcnn.atomistic.neighbors import DatasetNeighbors, content_hash, neighbor_list


def as_set(i, j, s):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(s).tolist())))


def slab(metal="Cu", size=(3, 3, 3), seed=0, adsorbate="O"):
    a = fcc111(metal, size=size, vacuum=7.0)
    add_adsorbate(a, adsorbate, 1.5, "fcc")
    a.info.pop("adsorbate_info", None)
    a.rattle(0.1, seed=seed)
    return a


def cases():
    rng = np.random.default_rng(0)
    skew = Atoms("Cu5", positions=rng.uniform(0, 3, (5, 3)), cell=[[3, 0, 0], [2.5, 3, 0], [1, 1.5, 2.8]], pbc=True)
    wire = skew.copy()
    wire.pbc = (True, False, True)
    moved = slab(seed=3)
    moved.positions[:4] += 2 * moved.cell[0] - 3 * moved.cell[1]  # unwrapped: outside the cell
    no_z = slab(size=(2, 2, 3), seed=4)
    no_z.cell[2] = 0.0  # a slab file without a z vector
    return {"molecule": (molecule("CH3CH2OH"), 4.0), "slab": (slab(), 6.0), "slab-unwrapped": (moved, 5.0),
            "slab-no-z-vector": (no_z, 5.0), "bulk": (bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2), 5.0),
            "tiny-cell-many-images": (bulk("Pt", "fcc", a=3.9), 12.0), "triclinic": (skew, 7.0),
            "mixed-pbc": (wire, 7.0)}


@pytest.mark.parametrize("name", list(cases()))
def test_neighbor_list_is_ases(name):
    atoms, cutoff = cases()[name]
    i, j, s = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    ai, aj, a_s = ase_neighbor_list("ijS", atoms, cutoff)
    assert as_set(i, j, s) == as_set(ai, aj, a_s) and len(i) == len(ai)  # same pairs, none twice
    assert not np.any((i == j) & np.all(s == 0, axis=1))  # no self pair at zero shift
    d = atoms.positions[j] - atoms.positions[i] + s @ atoms.cell.array
    assert np.linalg.norm(d, axis=1).max() < cutoff
    if name == "tiny-cell-many-images":
        assert np.all(i == 0) and len(i) > 400  # one atom, hundreds of its own images
    if not atoms.pbc.any():
        assert not s.any()


def _dataset(frames, energies=None) -> AtomsDataset:
    n = len(frames)
    return AtomsDataset(
        np.concatenate([a.positions for a in frames]), np.concatenate([a.numbers for a in frames]).astype(np.int64),
        offsets_from_counts(np.array([len(a) for a in frames])), np.array([a.cell.array for a in frames]),
        np.array([a.pbc for a in frames]), np.arange(n, dtype=float) if energies is None else energies,
        np.random.default_rng(1).normal(size=(sum(len(a) for a in frames), 3)), "eV")


@pytest.fixture(scope="module")
def mixed():
    """Slabs of two sizes, a bulk cell, a molecule: every kind of frame in one data set."""
    return _dataset([slab("Cu", (3, 3, 3), 0), slab("Pt", (2, 2, 3), 1, "N"), molecule("H2O"),
                     bulk("Ni", "fcc", a=3.52, cubic=True), slab("Ni", (3, 3, 3), 2, "C")])


def test_dataset_neighbors_are_each_frames_list(mixed):
    nb = DatasetNeighbors.compute(mixed, 5.0)
    assert len(nb) == len(mixed) and nb.offsets[-1] == len(nb.i)
    for k in range(len(mixed)):
        s = mixed.frame_slice(k)
        assert as_set(*nb.frame(k)) == as_set(*neighbor_list(mixed.positions[s], mixed.cells[k], mixed.pbc[k], 5.0))


def test_dataset_neighbors_cache_in_memory_and_on_disk(mixed, tmp_path, monkeypatch):
    monkeypatch.setenv("DCNN_CACHE", str(tmp_path))
    monkeypatch.setattr(DatasetNeighbors, "_memory", {})
    first = DatasetNeighbors.get(mixed, 4.0, disk=True)
    files = list((tmp_path / "neighbors").glob("*.npz"))
    assert [f.stem for f in files] == [content_hash(mixed, 4.0)]
    assert DatasetNeighbors.get(mixed, 4.0) is first  # memory
    monkeypatch.setattr(DatasetNeighbors, "_memory", {})

    def no_compute(*a, **k):
        raise AssertionError("recomputed although cached on disk")

    monkeypatch.setattr(DatasetNeighbors, "compute", classmethod(no_compute))
    again = DatasetNeighbors.get(mixed, 4.0, disk=True)
    for f in ("i", "j", "shifts", "offsets"):
        np.testing.assert_array_equal(getattr(again, f), getattr(first, f))
    monkeypatch.undo()
    monkeypatch.setenv("DCNN_CACHE", str(tmp_path))
    monkeypatch.setattr(DatasetNeighbors, "_memory", {})
    files[0].write_bytes(b"damaged")  # a damaged cache file is recomputed, never an error
    fixed = DatasetNeighbors.get(mixed, 4.0, disk=True)
    np.testing.assert_array_equal(fixed.shifts, first.shifts)
    moved = mixed.subset(np.arange(len(mixed)))
    moved.positions = moved.positions + 1e-9
    assert content_hash(moved, 4.0) != content_hash(mixed, 4.0) != content_hash(mixed, 4.5)


def test_collate_shapes_and_labels(mixed):
    nb = DatasetNeighbors.compute(mixed, 5.0)
    index = np.array([4, 2, 0])
    g, e, f = collate(mixed, nb, index, dtype=torch.float64)
    sizes = mixed.n_atoms[index]
    assert g.n_structures == 3 and g.n_atoms.tolist() == sizes.tolist()
    assert g.batch.tolist() == np.repeat([0, 1, 2], sizes).tolist()
    assert g.positions.is_leaf and not g.positions.requires_grad and g.positions.dtype == torch.float64
    assert g.cell_shifts.dtype == torch.float64 and torch.equal(g.cell_shifts, g.cell_shifts.round())
    assert g.n_edges == int(nb.n_edges[index].sum())
    src, dst = g.edge_index
    assert torch.equal(g.batch[src], g.batch[dst])  # edges never cross structures
    np.testing.assert_array_equal(e.numpy(), mixed.energies[index])
    np.testing.assert_array_equal(f.numpy(), mixed.forces[mixed.atom_index(index)])
    np.testing.assert_array_equal(g.numbers.numpy(), mixed.numbers[mixed.atom_index(index)])
    assert g.pbc.tolist() == mixed.pbc[index].tolist()
    g32 = g.to(dtype=torch.float32)
    assert g32.positions.dtype == torch.float32 and g32.edge_index.dtype == torch.long


def test_edge_vectors_are_minimum_image_vectors(mixed):
    """With the cutoff below half of every periodic cell's width each pair has one image in range, so r_ij
    must be ASE's minimum-image vector (find_mic, what get_distances(mic=True) uses) for every edge."""
    frames = [0, 4]  # the 3×3 slabs: widths ≥ 6.6 Å
    nb = DatasetNeighbors.compute(mixed, 3.2)
    g, _, _ = collate(mixed, nb, frames, dtype=torch.float64)
    r = g.edge_vectors().numpy()
    src, dst = g.edge_index.numpy()
    pos = g.positions.numpy()
    for b, k in enumerate(frames):
        edges = g.batch.numpy()[dst] == b
        mic, _ = find_mic(pos[src[edges]] - pos[dst[edges]], mixed.cells[k], mixed.pbc[k])
        np.testing.assert_allclose(r[edges], mic, atol=1e-12)
        assert edges.sum() > 50 and np.any(g.cell_shifts.numpy()[edges] != 0)  # the boundary is crossed


def test_edge_vectors_equal_ases_distance_vectors_with_many_images():
    atoms = bulk("Pt", "fcc", a=3.9)
    atoms2 = cases()["triclinic"][0]
    ds = _dataset([atoms, atoms2])
    g, _, _ = collate(ds, DatasetNeighbors.compute(ds, 8.0), [0, 1], dtype=torch.float64)
    r = g.edge_vectors().numpy()
    src, dst = g.edge_index.numpy()
    for b, a in enumerate([atoms, atoms2]):
        ai, aj, ad = ase_neighbor_list("ijD", a, 8.0)
        off = int(np.flatnonzero(g.batch.numpy() == b)[0])
        edges = g.batch.numpy()[dst] == b
        ours = {(int(i) - off, int(j) - off, tuple(np.round(v, 9))) for i, j, v in zip(dst[edges], src[edges], r[edges])}
        theirs = {(int(i), int(j), tuple(np.round(v, 9))) for i, j, v in zip(ai, aj, ad)}
        assert ours == theirs


def test_edge_lengths_invariant_to_translation_and_wrapping(mixed):
    rng = np.random.default_rng(5)
    moved_frames = []
    for k in range(len(mixed)):
        a = Atoms(numbers=mixed.numbers[mixed.frame_slice(k)], positions=mixed.positions[mixed.frame_slice(k)],
                  cell=mixed.cells[k], pbc=mixed.pbc[k])
        a.positions += rng.uniform(-20, 20, 3) * np.where(a.pbc, 1, 0.1)
        if a.pbc.any():
            a.wrap()
        moved_frames.append(a)
    moved = _dataset(moved_frames)
    index = np.arange(len(mixed))
    for ds_a, ds_b in ((mixed, moved),):
        ga, _, _ = collate(ds_a, DatasetNeighbors.compute(ds_a, 5.0), index, dtype=torch.float64)
        gb, _, _ = collate(ds_b, DatasetNeighbors.compute(ds_b, 5.0), index, dtype=torch.float64)
        assert ga.n_edges == gb.n_edges
        for b in range(len(index)):
            la = ga.edge_vectors().norm(dim=1)[ga.batch[ga.edge_index[1]] == b].sort().values
            lb = gb.edge_vectors().norm(dim=1)[gb.batch[gb.edge_index[1]] == b].sort().values
            torch.testing.assert_close(la, lb, atol=1e-10, rtol=0)


def test_edge_vectors_differentiable_in_positions_and_cells(mixed):
    """A pair energy's strain derivative by autograd (positions and cells strained together) equals the
    finite difference, and −∂E/∂x sums to zero per structure (no net force)."""
    nb = DatasetNeighbors.compute(mixed, 5.0)
    g, _, _ = collate(mixed, nb, [0, 3], dtype=torch.float64)

    def energy(eps, pos, cells):
        strain = torch.eye(3, dtype=torch.float64) + eps
        g.positions, g.cells = pos @ strain, cells @ strain
        r = g.edge_vectors().norm(dim=1)
        return torch.exp(-r).sum()

    pos0, cells0 = g.positions.detach().clone(), g.cells.detach().clone()
    pos = pos0.clone().requires_grad_(True)
    eps = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    e = energy(eps, pos, cells0)
    d_eps, d_pos = torch.autograd.grad(e, (eps, pos))
    h = 1e-6
    for a, b in ((0, 0), (0, 1), (2, 2)):
        step = torch.zeros(3, 3, dtype=torch.float64)
        step[a, b] = h
        fd = (energy(step, pos0, cells0) - energy(-step, pos0, cells0)) / (2 * h)
        assert d_eps[a, b].item() == pytest.approx(fd.item(), rel=1e-6, abs=1e-9)
    net = torch.zeros(2, 3, dtype=torch.float64).index_add_(0, g.batch, -d_pos)
    torch.testing.assert_close(net, torch.zeros_like(net), atol=1e-10, rtol=0)
    cells = cells0.clone().requires_grad_(True)
    (d_cell,) = torch.autograd.grad(energy(torch.zeros(3, 3, dtype=torch.float64), pos0, cells), cells)
    assert d_cell[0].abs().sum() > 0  # the periodic slab's cell enters the energy


def brute_triplets(edge_index, shifts=None):
    src, dst = edge_index.tolist()
    out = set()
    for a in range(len(src)):  # edge a: j → i
        for b in range(len(src)):  # edge b: k → j
            if dst[b] != src[a]:
                continue
            same = src[b] == dst[a]
            if shifts is not None:
                same = same and all(x + y == 0 for x, y in zip(shifts[b], shifts[a]))
            if not same:
                out.add((b, a))
    return out


def test_triplets_match_brute_force_on_a_molecule_batch():
    ds = _dataset([molecule("CH3CH2OH"), molecule("C6H6"), molecule("H2O")])
    g, _, _ = collate(ds, DatasetNeighbors.compute(ds, 2.5), [0, 1, 2], dtype=torch.float64)
    kj, ji = triplets(g.edge_index, len(g.numbers))
    pairs = set(zip(kj.tolist(), ji.tolist()))
    assert pairs == brute_triplets(g.edge_index) and len(pairs) == len(kj) > 100
    src, dst = g.edge_index
    assert torch.equal(dst[kj], src[ji]) and not torch.any(src[kj] == dst[ji])


def test_triplets_in_periodic_graphs_keep_other_images_of_i():
    ds = _dataset([bulk("Cu", "fcc", a=3.6), slab("Cu", (2, 2, 3), 0)])
    g, _, _ = collate(ds, DatasetNeighbors.compute(ds, 3.0), [0, 1], dtype=torch.float64)
    shifts = g.cell_shifts.long()
    kj, ji = triplets(g.edge_index, len(g.numbers), cell_shifts=shifts)
    assert set(zip(kj.tolist(), ji.tolist())) == brute_triplets(g.edge_index, shifts.tolist())
    src, dst = g.edge_index
    # in one-atom bulk every neighbour is an image of the same atom: k = i triplets that are not back-tracks
    assert torch.any(src[kj] == dst[ji])
    r = g.edge_vectors()
    back = (r[kj] + r[ji]).norm(dim=1)  # the vector i → k; zero only for a back-track
    assert back.min() > 1.0
    kj0, _ = triplets(g.edge_index, len(g.numbers))
    assert len(kj0) < len(kj)  # index-only exclusion drops those legitimate angles
