"""Studies on real multi-node Ray clusters started with `ray start` on this machine."""
import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import write_study
from local_cluster import ENV, LocalRayCluster, MlflowServer

REF = {"activation": "irelu", "denorm": True, "rescale": True}
ARMS = [{"activation": ["irelu"], "denorm": [True], "rescale": [True, False]}]


def ablate(*args, timeout=400):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "ablate", *args], capture_output=True,
                          text=True, timeout=timeout, env={k: v for k, v in ENV.items() if k != "RAY_ADDRESS"})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_two_node_cluster_places_trials_on_both_nodes(tmp_path):
    cluster = LocalRayCluster(tmp_path, [{"cpus": 1}, {"cpus": 1}])
    server = MlflowServer(tmp_path / "mlflow")
    try:
        cluster.start()
        server.start()
        study = write_study(tmp_path / "two.yaml", ARMS, REF, seeds=(0, 1), fixed={"epochs": 6, "n_train": 100})
        storage = tmp_path / "shared-storage"  # both nodes see this path (same machine: same disk)
        proc = ablate("--study", study, "--address", cluster.address, "--storage", str(storage),
                      "--tracking-uri", server.uri, "--experiment", "two-nodes")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        trials = pd.read_csv(storage / "two-nodes/report/trials.csv")
        assert len(trials) == 4 and trials.finished.all()
        assert trials.node_id.nunique() == 2, trials[["arm", "seed", "node_id"]]
        c = MlflowClient(server.uri)
        exp = c.get_experiment_by_name("two-nodes")
        runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("dcnn.role") == "trial"]
        assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
        assert len({r.data.tags["node_id"] for r in runs}) == 2 and all(r.data.tags["hostname"] for r in runs)
        parent = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("dcnn.role") == "study"][0]
        assert "report/report.md" in {a.path for a in c.list_artifacts(parent.info.run_id, "report")}
    finally:
        pids = cluster.pids + ([server.proc.pid] if server.proc else [])
        cluster.stop()
        server.stop()
    time.sleep(1)
    assert not any(_alive(p) for p in pids)


def test_fractional_gpus_share_devices_and_oversized_requests_fail(tmp_path):
    """Nodes declared with --num-gpus 2: --gpus-per-trial 0.5 runs 4 trials at once; each trial sees
    only the GPU id Ray assigned it; without a usable CUDA the trainer falls back to CPU."""
    cluster = LocalRayCluster(tmp_path, [{"cpus": 4, "gpus": 2}])
    try:
        cluster.start()
        study = write_study(tmp_path / "gpu.yaml", ARMS, REF, seeds=(0, 1), fixed={"epochs": 30, "n_train": 200})
        storage = tmp_path / "res"
        proc = ablate("--study", study, "--address", cluster.address, "--storage", str(storage),
                      "--gpus-per-trial", "0.5", "--cpus-per-trial", "1", "--experiment", "gpu")
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        trials = pd.read_csv(storage / "gpu/report/trials.csv", dtype={"gpu_ids": str})
        assert len(trials) == 4
        assert sorted(trials.gpu_ids) == ["0", "0", "1", "1"]  # 2 trials per GPU, one id each
        results = [json.loads(p.read_text().splitlines()[-1]) for p in (storage / "gpu").glob("*/result.json")]
        assert all(r["cuda_visible_devices"] == r["gpu_ids"] for r in results)
        assert all(r["device"] == "cpu" for r in results)  # torch has no CUDA here: clear fallback
        # all four ran at the same time
        latest_start = trials.started_at.max()
        assert (trials.finished_at > latest_start).all(), trials[["started_at", "finished_at"]]

        t0 = time.time()
        too_big = ablate("--study", study, "--address", cluster.address, "--storage", str(storage),
                         "--gpus-per-trial", "4", "--experiment", "too-big", timeout=120)
        assert too_big.returncode == 2 and "no node of the Ray cluster can hold one trial" in too_big.stderr
        assert "0.5" not in too_big.stderr and "4 GPU per trial" in too_big.stderr
        assert time.time() - t0 < 60 and not (storage / "too-big").exists()
    finally:
        cluster.stop()


def test_cpu_fallback_is_said_once(caplog):
    import torch

    import dcnn.train as train_mod

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    train_mod._warned_cpu_fallback = False
    with caplog.at_level("WARNING", logger="dcnn"):
        assert train_mod.resolve_device("cuda").type == "cpu"
        assert train_mod.resolve_device("cuda").type == "cpu"
    warnings = [r for r in caplog.records if "falling back to CPU" in r.getMessage()]
    assert len(warnings) == 1 and "device=cuda requested" in warnings[0].getMessage()
