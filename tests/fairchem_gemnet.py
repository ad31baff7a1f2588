"""fairchem's own GemNet-T (fairchem-core 1.10, `fairchem.core.models.gemnet.gemnet.GemNetT`) as a peer for
our dcnn/models/gemnet_t.py: same sizes, our weights copied in, its own graph code run on its own radius
graph: molecules through its non-periodic on-the-fly graph (`build_fairchem_gemnet_t`'s `run`), periodic
frames through `run_periodic`: fairchem's own `radius_graph_pbc` makes the edges and cell offsets, its
`get_pbc_distances`, symmetric-edge reordering, swap and triplet code the rest.  fairchem's periodic graph
code is float32-only (it builds the image offsets as float32 and casts the cell to float32), so
`run_periodic` takes the graph's topology from a float32 copy of the frames and runs the float64 model on
it with `otf_graph=False`; cells must be exact in float32, with S·cell exact too (`dyadic_cell`), so that
the float32 cast in `get_pbc_distances` loses nothing.

fairchem-core is optional (`pip install fairchem-core==1.10.0 --no-deps`); its GemNet needs three compiled
packages that have no wheels for this torch, supplied here in plain torch *only if they are missing*:
`torch_scatter.scatter` / `segment_csr`, `torch_sparse.SparseTensor` (the row selection `adj[idx]` that
GemNet's `get_triplets` uses) and torch_geometric's `radius_graph` (torch-cluster; the plain version from
dcnn/models/pyg_reference.py).  Two packages fairchem imports at module level but GemNet never calls
(lmdb, huggingface_hub) are given empty placeholder modules when absent.
"""
from __future__ import annotations

import sys
import types

import torch


def _scatter(src, index, dim=0, dim_size=None, reduce="sum"):
    assert dim == 0 and reduce in ("sum", "add", "mean")
    size = int(index.max()) + 1 if dim_size is None else int(dim_size)
    out = src.new_zeros((size, *src.shape[1:])).index_add_(0, index, src)
    if reduce == "mean":
        count = torch.bincount(index, minlength=size).clamp(min=1).to(src.dtype)
        out = out / count.view(-1, *([1] * (src.dim() - 1)))
    return out


def _segment_csr(src, indptr, reduce="sum"):
    assert reduce == "sum"
    c = torch.cat([src.new_zeros(1), src.cumsum(0)])
    return c[indptr[1:]] - c[indptr[:-1]]


class _Storage:
    def __init__(self, row, value):
        self._row, self._value = row, value

    def row(self):
        return self._row

    def value(self):
        return self._value


class _SparseTensor:
    """CSR adjacency (rows sorted, columns sorted within a row); `adj[idx]` stacks the rows idx."""

    def __init__(self, row, col, value, sparse_sizes):
        perm = torch.argsort(row * sparse_sizes[1] + col, stable=True)
        self.row, self.value, self.n_rows = row[perm], value[perm], sparse_sizes[0]

    def __getitem__(self, idx):
        counts = torch.bincount(self.row, minlength=self.n_rows)
        ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
        c = counts[idx]
        new_row = torch.repeat_interleave(torch.arange(idx.numel(), device=idx.device), c)
        offset = torch.arange(int(c.sum()), device=idx.device) - torch.repeat_interleave(c.cumsum(0) - c, c)
        pos = torch.repeat_interleave(ptr[idx], c) + offset
        out = types.SimpleNamespace(storage=_Storage(new_row, self.value[pos]))
        return out


def import_fairchem_gemnet():
    """fairchem's gemnet module, or None where fairchem-core is not installed.

    The plain-torch stand-ins are visible in sys.modules only while fairchem imports: torch_geometric
    (imported first) must not see a `torch_scatter` and switch its own code paths to it."""
    import torch_geometric  # noqa: F401  (decides its optional back-ends now, without our stand-ins)

    added = []

    def module(name, **attrs):
        try:
            __import__(name)
        except ImportError:
            m = types.ModuleType(name)
            m.__dict__.update(attrs)
            sys.modules[name] = m
            added.append(name)

    module("torch_scatter", scatter=_scatter, segment_csr=_segment_csr)
    module("torch_sparse", SparseTensor=_SparseTensor)
    module("lmdb")
    module("huggingface_hub", hf_hub_download=None)
    try:
        import fairchem.core.models.base as fc_base
        import fairchem.core.models.gemnet.gemnet as fc_gemnet
    except ImportError:
        return None
    finally:
        for name in added:
            del sys.modules[name]
    from dcnn.models.pyg_reference import _radius_graph_all_pairs

    fc_base.radius_graph = _radius_graph_all_pairs  # torch-cluster's is compiled
    return fc_gemnet


def build_fairchem_gemnet_t(blocks, emb_atom, emb_edge, emb_trip, emb_rbf, emb_cbf, emb_bil_trip, spherical,
                            radial, cutoff, before_skip=1, after_skip=2, concat=1, num_atom=3, rbf="gaussian",
                            envelope_exponent=5):
    """fairchem's GemNetT (energy-conserving: direct_forces=False) and a `__call__(positions [B, N, 3], Z)`
    returning (E [B], F [B, N, 3]) through its own forward."""
    from torch_geometric.data import Batch, Data

    model = import_fairchem_gemnet().GemNetT(
        num_spherical=spherical, num_radial=radial, num_blocks=blocks, emb_size_atom=emb_atom,
        emb_size_edge=emb_edge, emb_size_trip=emb_trip, emb_size_rbf=emb_rbf, emb_size_cbf=emb_cbf,
        emb_size_bil_trip=emb_bil_trip, num_before_skip=before_skip, num_after_skip=after_skip,
        num_concat=concat, num_atom=num_atom, regress_forces=True, direct_forces=False, cutoff=cutoff,
        rbf={"name": rbf}, envelope={"name": "polynomial", "exponent": envelope_exponent},
        otf_graph=True, use_pbc=False, activation="silu")

    def run(positions, numbers):
        b, n, _ = positions.shape
        data = Batch.from_data_list([Data(pos=positions[i].detach().clone(), atomic_numbers=numbers,
                                          natoms=torch.tensor([n])) for i in range(b)])
        out = model(data)
        return out["energy"].view(-1), out["forces"].view(b, n, 3)

    return model, run


def dyadic_cell(atoms, bits: int = 8):
    """`atoms` (ASE, changed in place) with its cell rounded to multiples of 2^-bits Å (positions kept): then
    the cell and every integer-shift offset S·cell are exact in float32, as fairchem's periodic code
    needs for a float64 comparison (see the module docstring)."""
    import numpy as np

    atoms.set_cell(np.round(np.array(atoms.cell) * 2 ** bits) / 2 ** bits, scale_atoms=False)
    return atoms


def run_periodic(model, frames, max_neighbors: int = 100_000):
    """(E [B], F [A, 3]) of fairchem's GemNetT on ASE frames (one pbc pattern for all, as fairchem needs),
    through its periodic path (use_pbc=True) on its own radius graph, no neighbour cap (`max_neighbors`);
    the model's dtype is the computation's."""
    import numpy as np
    from torch_geometric.data import Batch, Data

    fc_base = sys.modules["fairchem.core.models.base"]
    dtype = next(model.parameters()).dtype

    def batch(dt):
        return Batch.from_data_list([
            Data(pos=torch.as_tensor(a.positions, dtype=dt), atomic_numbers=torch.as_tensor(a.numbers),
                 natoms=torch.tensor([len(a)]), cell=torch.as_tensor(np.array(a.cell), dtype=dt)[None],
                 pbc=torch.as_tensor(a.pbc)[None]) for a in frames])

    topology = batch(torch.float32)
    edge_index, cell_offsets, neighbors = fc_base.radius_graph_pbc(topology, model.cutoff, max_neighbors)
    data = batch(dtype)
    cells = data.cell.repeat_interleave(neighbors, dim=0)
    exact = torch.einsum("ek,ekl->el", cell_offsets.to(dtype), cells)
    cast = torch.einsum("ek,ekl->el", cell_offsets.float(), cells.float()).to(dtype)
    if not (torch.equal(data.cell.float().to(dtype), data.cell) and torch.equal(cast, exact)):
        raise ValueError("fairchem's get_pbc_distances casts S·cell to float32: use a dyadic_cell")
    data.edge_index, data.cell_offsets, data.neighbors = edge_index, cell_offsets, neighbors
    saved = model.otf_graph, model.use_pbc
    model.otf_graph, model.use_pbc = False, True
    try:
        out = model(data)
    finally:
        model.otf_graph, model.use_pbc = saved
    return out["energy"].view(-1), out["forces"]


def load_into_ours(ours, theirs) -> None:
    """Copy fairchem's weights into our GemNetT (same module names; unfitted fairchem scale factors are 0,
    meaning 1, which is ours)."""
    state = theirs.state_dict()
    mine = ours.state_dict()
    with torch.no_grad():
        for key, value in mine.items():
            if key.endswith("scale_factor"):
                continue
            if key == "atom_emb.weight":
                value[:state["atom_emb.embeddings.weight"].shape[0]].copy_(state["atom_emb.embeddings.weight"])
                continue
            value.copy_(state[key])
    unused = set(state) - set(mine) - {"atom_emb.embeddings.weight"}
    # seq_energy is fairchem's alias of an output block's `layers`
    assert all(k.endswith("scale_factor") or ".seq_energy." in k for k in unused), sorted(unused)
