import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REAL_DATA = ROOT / "tests" / "data"  # real rMD17 frames (CC0), see tests/data/README.md


@pytest.fixture(scope="session")
def ethanol():
    from dcnn.data import DEFAULT_DATASET, load_dataset

    return load_dataset(DEFAULT_DATASET)

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

TINY = {"n_train": 40, "n_val": 20, "n_test": 20, "epochs": 2}


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



def assert_symmetries(model, pos, Z, e_atol=1e-10, f_atol=1e-9):
    """E invariant and F equivariant under a rotation + translation and under swapping like atoms
    (the carbons, each carbon's hydrogens); swapping unlike atoms (C and O) must change E."""
    import torch

    from dcnn.models import energy_and_forces

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
        fd = -(model((pos + steps).view(n, -1, 3), Z) - model((pos - steps).view(n, -1, 3), Z)) / (2 * h)
    return fd.view_as(pos)


def assert_batch_of_one(model, pos, Z):
    """Frame 3 alone gives the same E and F as inside its batch (no cross-frame leakage)."""
    from dcnn.models import energy_and_forces

    e_all, f_all = energy_and_forces(model, pos, Z, False)
    e_one, f_one = energy_and_forces(model, pos[3:4], Z, False)
    torch.testing.assert_close(e_one, e_all[3:4], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(f_one, f_all[3:4], rtol=1e-12, atol=1e-12)


def assert_smooth_at_cutoff(model, far_atol=1e-14):
    """Atom 2 moves away along −x from atom 0 (atom 1 sits at +1 Å): its last pair leaves at d = 6, the
    cutoff. E is continuous there and constant beyond, F → 0 (C²); `far_atol`: E at 7 Å vs 20 Å (other
    rounding: its row sits elsewhere in the matmuls)."""
    from dcnn.models import energy_and_forces

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
