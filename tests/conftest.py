import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import psutil
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# `make test` runs the suite in two processes (pytest-xdist workers "gw0", "gw1"), each with its own Ray
# (the `ray_session` fixture and every study a test starts), inherited by the processes a test starts:
# - its own Ray temp folder: Ray's `session_latest` link, which tests/test_faults.py reads, and the address
#   `ray start` records belong to one process's Rays; short, for Ray's socket paths (at most 107 bytes);
# - workers of an in-process Ray on ports the OS picks (RAY_USE_RANDOM_PORTS, Ray's switch for tests):
#   two Rays starting at once would otherwise hand the same first ports of one fixed range to their workers;
#   `ray start` clusters take theirs from the process's own window (tests/local_cluster.py);
# - MLflow's sqlite store is per session (`tracking_uri`), hence per process.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
# where the folders go: the first process's (xdist's controller's) RAY_TMPDIR or temp folder, not the folder
# that process made for itself, which its workers inherit as RAY_TMPDIR
_BASE = os.environ.setdefault("DCNN_TEST_RAY_TMPDIR_BASE", os.environ.get("RAY_TMPDIR") or tempfile.gettempdir())
RAY_TMP = tempfile.mkdtemp(prefix=f"dcnn-ray-{WORKER or 'main'}-", dir=_BASE)
os.environ["RAY_TMPDIR"] = RAY_TMP
os.environ.setdefault("RAY_USE_RANDOM_PORTS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def kill_driver(proc) -> None:
    """SIGKILL a study's driver and every process it started, and wait until all are gone.

    Ray puts each worker in a process group of its own (setpgid), so killing the driver's group leaves the
    workers running until they notice their raylet died; meanwhile one can still write a checkpoint into the
    study folder.  A test that looks at the folder after a kill must see what the killed run left, not what
    its orphans add later: the tree is frozen (SIGSTOP, until no new child appears), then killed."""
    frozen: dict[int, psutil.Process] = {}
    try:
        tree = [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        tree = []
    while tree:
        for p in tree:
            frozen[p.pid] = p
            try:
                p.send_signal(signal.SIGSTOP)
            except psutil.NoSuchProcess:
                pass
        tree = [c for p in list(frozen.values()) for c in _children(p) if c.pid not in frozen]
    for p in frozen.values():
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    proc.wait()
    _, alive = psutil.wait_procs(list(frozen.values()), timeout=60)
    assert not alive, f"processes of the killed driver still alive: {alive}"


def _children(p: "psutil.Process") -> list:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


REAL_DATA = ROOT / "tests" / "data"  # real rMD17 frames (CC0), see tests/data/README.md


@pytest.fixture(scope="session")
def ethanol():
    from dcnn.atomistic.molecules import DEFAULT_DATASET, load_dataset

    return load_dataset(DEFAULT_DATASET)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

TINY = {"n_train": 40, "n_val": 20, "n_test": 20, "epochs": 2}

# pytest-xdist (`make test`: `--dist loadgroup`) hands tests out in collection order as its processes ask for
# more: the longest go first, so neither process is left running a long one alone at the end (a 2-core run:
# the kill matrix ≈ 300 s, test_cluster.py ≈ 170 s, each other fault test ≈ 50–65 s, the studies of
# test_tune.py and test_storage.py 20–45 s; most other tests take under 5 s)
FIRST = ("test_faults.py::test_driver_killed_at_every_moment_then_resumed", "test_cluster.py", "test_faults.py",
         "test_tune.py", "test_storage.py")
# test_cluster.py in one process: its module-scoped two-node `ray start` cluster and MLflow server are started
# once for the tests that share them, and never two clusters of several nodes at once
GROUPS = {"test_cluster.py": "cluster"}


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.nodeid.rsplit("/", 1)[-1]
        return next((k for k, prefix in enumerate(FIRST) if name.startswith(prefix)), len(FIRST))

    items.sort(key=rank)  # stable: otherwise the collection order
    for item in items:
        if item.path.name in GROUPS:
            item.add_marker(pytest.mark.xdist_group(GROUPS[item.path.name]))


def pytest_sessionfinish(session, exitstatus):
    """This process's Ray temp folder goes when every test passed; after a failure it stays, for Ray's logs."""
    if exitstatus == 0 or not os.listdir(RAY_TMP):
        shutil.rmtree(RAY_TMP, ignore_errors=True)
    else:
        print(f"\nRay's logs of this test process: {RAY_TMP}", file=sys.stderr)


@pytest.fixture(scope="session")
def ray_session():
    """One in-process Ray for the whole test session (≈ 4 s to start)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tracking_uri(tmp_path_factory):
    """One sqlite MLflow store for the session (the first use of a new DB costs ≈ 6 s)."""
    import warnings

    warnings.filterwarnings("ignore", message=".*noload.*")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto) on 127.0.0.1 for the session; buckets are per test."""
    from local_cluster import S3Server

    server = S3Server(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process sees the store the way a user configures it: credentials and endpoint in the
    SDK's standard environment variables (nothing in flags)."""
    for k, v in s3_server.env.items():
        monkeypatch.setenv(k, v)
    return s3_server


def write_study(path, designs, reference=None, models=("schnet",), seeds=(0,), fixed=None):
    import yaml

    data = {"designs": designs, "models": list(models), "seeds": list(seeds), "fixed": {**TINY, **(fixed or {})}}
    if reference:
        data["reference"] = reference
    path.write_text(yaml.safe_dump(data))
    return str(path)


def positions(ethanol, n=4):
    """The first n bundled ethanol frames as a float64 tensor [n, 9, 3]."""
    import torch

    return torch.as_tensor(ethanol.positions[:n], dtype=torch.float64)


def random_rotation(seed):
    """A seeded proper rotation matrix (det +1), for invariance/equivariance tests."""
    import torch

    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if torch.det(q) > 0 else -q



def dense_ef(model, pos, Z, create_graph=False, cutoff=None):
    """E [B] and F [B, N, 3] of frames of one molecule given as dense arrays (pos [B, N, 3], Z [N]): the
    frames as one AtomicGraph (complete, or pairs within `cutoff`), forces reshaped back."""
    from dcnn.atomistic.graph import molecule_graph
    from dcnn.models import energy_and_forces

    e, f = energy_and_forces(model, molecule_graph(pos, Z, cutoff), create_graph)
    return e, f.reshape(pos.shape)


def dense_energy(model, pos, Z, cutoff=None):
    """E [B] of dense frames (no forces)."""
    from dcnn.atomistic.graph import molecule_graph
    from dcnn.models import prepare

    return model(prepare(model, molecule_graph(pos, Z, cutoff)))


def assert_symmetries(model, pos, Z, e_atol=1e-10, f_atol=1e-9):
    """E invariant and F equivariant under a rotation + translation and under swapping like atoms
    (the carbons, each carbon's hydrogens); swapping unlike atoms (C and O) must change E."""
    import torch

    energy_and_forces = dense_ef
    e, f = energy_and_forces(model, pos, Z, False)
    rot = random_rotation(1)
    e_rt, f_rt = energy_and_forces(model, pos @ rot.T + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64), Z, False)
    torch.testing.assert_close(e_rt, e, rtol=1e-10, atol=e_atol)
    torch.testing.assert_close(f_rt, f @ rot.T, rtol=1e-9, atol=f_atol)
    perm = torch.tensor([1, 0, 2, 5, 3, 4, 8, 6, 7])  # swap the carbons, cycle the H's of each C
    assert torch.equal(Z[perm], Z)
    e_p, f_p = energy_and_forces(model, pos[:, perm], Z, False)
    torch.testing.assert_close(e_p, e, rtol=1e-10, atol=e_atol)
    torch.testing.assert_close(f_p, f[:, perm], rtol=1e-9, atol=f_atol)
    assert not torch.allclose(energy_and_forces(model, pos[:, torch.tensor([2, 1, 0, 3, 4, 5, 6, 7, 8])], Z, False)[0], e)


def central_difference_forces(model, pos, Z, h=1e-5):
    """−∂E/∂x of one frame [1, N, 3] by central differences, all 3N displacements in one batch."""
    import torch

    n = pos.shape[1] * 3
    steps = torch.zeros(n, 1, pos.shape[1], 3, dtype=pos.dtype)
    steps.view(n, n)[range(n), range(n)] = h
    with torch.no_grad():
        fd = -(dense_energy(model, (pos + steps).view(n, -1, 3), Z)
               - dense_energy(model, (pos - steps).view(n, -1, 3), Z)) / (2 * h)
    return fd.view_as(pos)


def assert_batch_of_one(model, pos, Z):
    """Frame 3 alone gives the same E and F as inside its batch (no cross-frame leakage)."""
    energy_and_forces = dense_ef
    e_all, f_all = energy_and_forces(model, pos, Z, False)
    e_one, f_one = energy_and_forces(model, pos[3:4], Z, False)
    torch.testing.assert_close(e_one, e_all[3:4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f_one, f_all[3:4], rtol=1e-12, atol=1e-12)


def assert_smooth_at_cutoff(model, far_atol=1e-14):
    """Atom 2 moves away along −x from atom 0 (atom 1 sits at +1 Å): its last pair leaves at d = 6, the
    cutoff. E is continuous there and constant beyond, F → 0 (C²); `far_atol`: E at 7 Å vs 20 Å (other
    rounding: its row sits elsewhere in the matmuls)."""
    energy_and_forces = dense_ef
    z = torch.tensor([6, 8, 1])
    d = torch.tensor([5.999, 6.0, 6.001, 7.0, 20.0], dtype=torch.float64)
    pos = torch.zeros(5, 3, 3, dtype=torch.float64)
    pos[:, 1, 0] = 1.0
    pos[:, 2] = d[:, None] * torch.tensor([-0.96, 0.28, 0.0], dtype=torch.float64)  # |x_2 − x_0| = d
    e, f = energy_and_forces(model, pos, z, False)
    assert abs(e[0] - e[1]) < 1e-9 and e[1] == e[2] == e[3]  # no term with atom 2 from the cutoff on
    assert abs(e[3] - e[4]) < far_atol
    assert (f[1:, 2] == 0).all() and f[0, 2].abs().max() < 1e-6  # C²: F → 0 as d → cutoff
    assert e[0] != e[4]  # atom 2 did interact inside


def atoms_graph(frames, cutoff, dtype=None):
    """ASE Atoms frames (periodic or not) as one AtomicGraph with the radius-`cutoff` neighbour lists of the
    data layer (vesin, periodic images), float64 by default: for the periodic checks."""
    import numpy as np
    import torch

    from dcnn.atomistic.dataset import AtomsDataset, offsets_from_counts
    from dcnn.atomistic.graph import collate
    from dcnn.atomistic.neighbors import DatasetNeighbors

    counts = np.array([len(a) for a in frames])
    ds = AtomsDataset(positions=np.concatenate([a.positions for a in frames]),
                      numbers=np.concatenate([a.numbers for a in frames]).astype(np.int64),
                      offsets=offsets_from_counts(counts), cells=np.stack([np.array(a.cell) for a in frames]),
                      pbc=np.stack([a.pbc for a in frames]), energies=np.zeros(len(frames)),
                      forces=np.zeros((int(counts.sum()), 3)))
    graph, _, _ = collate(ds, DatasetNeighbors.compute(ds, cutoff), np.arange(len(frames)),
                          dtype=dtype or torch.float64)
    return graph


def slab_with_adsorbate(size=(2, 2, 3), seed=0):
    """A Cu(111) slab with an O on top, periodic in x and y (pbc T, T, F), atoms jittered (no symmetry
    to hide a bug behind)."""
    import numpy as np
    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", size=size, vacuum=6.0)
    add_adsorbate(slab, "O", 1.8, "fcc")
    slab.positions += np.random.default_rng(seed).normal(0.0, 0.05, slab.positions.shape)
    return slab


def assert_periodic_physics(model, cutoff, intensive=False, f_atol=1e-8):
    """On periodic frames: E and F unchanged by a translation with every atom wrapped back into the cell;
    E invariant and F equivariant under a rotation of positions and cell; a 2×1×1 supercell has twice the
    energy (`intensive`: the same energy, as CGCNN's mean pooling gives, and half the force on each atom)
    and its forces repeat; forces equal central differences, also for atoms whose
    neighbours lie across the cell boundary; a bulk cell smaller than the cutoff (many images of every
    atom) has 1/27 of its 3×3×3 supercell's energy (or the same, intensive)."""
    import numpy as np
    import torch
    from ase.build import bulk

    from dcnn.models import energy_and_forces

    def ef(frames):
        e, f = energy_and_forces(model, atoms_graph(frames, cutoff), False)
        return e.detach(), f.detach()

    slab = slab_with_adsorbate()
    e, f = ef([slab])
    moved = slab.copy()
    moved.positions += np.array([1.7, -2.3, 0.4])
    moved.wrap()  # atoms back into the cell: different images, same crystal
    assert not np.allclose(moved.positions, slab.positions + np.array([1.7, -2.3, 0.4]))
    e_m, f_m = ef([moved])
    torch.testing.assert_close(e_m, e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f_m, f, rtol=1e-8, atol=f_atol)

    rot = random_rotation(3).numpy()
    turned = slab.copy()
    turned.set_cell(np.array(slab.cell) @ rot.T, scale_atoms=False)
    turned.positions = slab.positions @ rot.T
    e_r, f_r = ef([turned])
    torch.testing.assert_close(e_r, e, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(f_r, f @ torch.as_tensor(rot).T, rtol=1e-8, atol=f_atol)

    double = slab.repeat((2, 1, 1))
    e_2, f_2 = ef([double])
    torch.testing.assert_close(e_2, e if intensive else 2 * e, rtol=1e-10, atol=1e-9)
    n = len(slab)
    forces_scale = 0.5 if intensive else 1.0  # a mean over twice the atoms halves each atom's share
    torch.testing.assert_close(f_2[:n], forces_scale * f, rtol=1e-8, atol=f_atol)
    torch.testing.assert_close(f_2[n:], forces_scale * f, rtol=1e-8, atol=f_atol)

    # central differences, atoms near the cell's edges (their neighbours are images) among them
    frac = slab.get_scaled_positions()[:, :2]
    edge_atoms = np.flatnonzero((frac < 0.2).any(1) | (frac > 0.8).any(1))
    assert edge_atoms.size
    h = 1e-5
    for atom in [int(edge_atoms[0]), int(edge_atoms[-1]), n - 1]:
        for axis in range(3):
            plus, minus = slab.copy(), slab.copy()
            plus.positions[atom, axis] += h
            minus.positions[atom, axis] -= h
            fd = -(ef([plus])[0] - ef([minus])[0]) / (2 * h)
            assert abs(float(fd) - float(f[atom, axis])) < 1e-6 * max(1.0, float(f.abs().max())), (atom, axis)

    tiny = bulk("Cu", "fcc", a=3.6)  # one atom, cell ≈ 2.5 Å: every neighbour within the cutoff is an image
    big = tiny.repeat((3, 3, 3))
    e_t, f_t = ef([tiny])
    e_b, _ = ef([big])
    torch.testing.assert_close(e_b, e_t if intensive else 27 * e_t, rtol=1e-9, atol=1e-8)
    assert f_t.abs().max() < 1e-8  # a perfect crystal: no net force on any atom
