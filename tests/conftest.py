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
