import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

REAL_DATA = ROOT.parent / "shared" / "real-data"


@pytest.fixture(scope="session")
def ethanol():
    from dcnn.data import DEFAULT_DATASET, load_dataset

    return load_dataset(DEFAULT_DATASET)
