"""Studies on real multi-node Ray clusters started with `ray start` on this machine."""
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import write_study
from local_cluster import ENV, LocalRayCluster, MlflowServer

REF = {"activation": "irelu", "denorm": True, "rescale": True}
ARMS = [{"activation": ["irelu"], "denorm": [True], "rescale": [True, False]}]
ONE_ARM = [{"activation": ["irelu"], "denorm": [True], "rescale": [True]}]


def ablate(*args, timeout=400, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "ablate", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd,
                          env={**{k: v for k, v in ENV.items() if k != "RAY_ADDRESS"}, **(env or {})})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory, s3_server):
    """Two worker nodes (1 CPU each) and a head without CPUs, where the driver runs (as on KubeRay), all
    started with `ray start`.  Each node is set up as a separate machine would be: its own Ray temp folder
    (sessions, logs, trial working folders), its own working folder, and the object store's credentials
    in its own environment; the endpoint is not set there (the driver's reaches the trials)."""
    root = tmp_path_factory.mktemp("two-nodes")
    temps = [Path(tempfile.mkdtemp(prefix="rn", dir="/tmp")) for _ in range(3)]  # short: Ray's socket paths
    cwds = [root / f"node{k}-cwd" for k in range(3)]
    node_env = {**{k: v for k, v in ENV.items() if not k.startswith("AWS_")}, **s3_server.credentials,
                "AWS_EC2_METADATA_DISABLED": "true"}
    for d in cwds:
        d.mkdir()
    cluster = LocalRayCluster(root, [{"cpus": cpus, "env": node_env, "temp_dir": t, "cwd": c}
                                     for cpus, t, c in zip((0, 1, 1), temps, cwds)])
    cluster.start()
    cluster.temp_dirs, cluster.cwds = temps, cwds
    yield cluster
    pids = cluster.pids
    cluster.stop()
    for t in temps:
        shutil.rmtree(t, ignore_errors=True)
    time.sleep(1)
    assert not any(_alive(p) for p in pids)


@pytest.fixture(scope="module")
def mlflow_s3(tmp_path_factory, s3_server):
    """An MLflow server on 127.0.0.1 whose artifacts go to the bucket (`--artifacts-destination s3://`):
    the server holds the store's credentials and proxies; its clients need none."""
    bucket = s3_server.bucket("cluster")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), f"s3://{bucket}/mlartifacts", s3_server.env).start()
    yield server
    pid = server.proc.pid
    server.stop()
    time.sleep(0.5)
    assert not _alive(pid)


def test_two_node_cluster_places_trials_on_both_nodes(tmp_path, two_nodes, mlflow_s3):
    cluster, server = two_nodes, mlflow_s3
    # trials several times longer than a worker's start (≈ 1.6 s here; 6 epochs were about as long): with
    # actors reused, a node whose worker started after a whole trial on the other node had ended was left
    # without a trial once under load, all four running on one node
    study = write_study(tmp_path / "two.yaml", ARMS, REF, seeds=(0, 1), fixed={"epochs": 40, "n_train": 100})
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


def test_auto_seeds_on_a_two_node_cluster(tmp_path, two_nodes, mlflow_s3):
    """`seeds: auto` on a `ray start` cluster (its searcher runs in the driver, on the head without CPUs):
    the design's trials run on the worker nodes, every arm's seeds are 0..k-1 with k from the minimum to the
    maximum, one FINISHED MLflow run per trial, and the report says what the design decided."""
    import yaml

    path = tmp_path / "auto.yaml"
    study = write_study(path, ARMS, REF, fixed={"epochs": 2, "n_train": 100})
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "seeds": {"auto": {"min": 2, "max": 3}}}))
    storage = tmp_path / "shared-storage"
    proc = ablate("--study", study, "--address", two_nodes.address, "--storage", str(storage),
                  "--tracking-uri", mlflow_s3.uri, "--experiment", "auto-two-nodes")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trials = pd.read_csv(storage / "auto-two-nodes/report/trials.csv")
    assert trials.finished.all() and set(trials.arm) == {"irelu+DN+LR", "irelu+DN"}
    for arm, g in trials.groupby("arm"):
        assert sorted(g.seed) == list(range(len(g))) and 2 <= len(g) <= 3, (arm, list(g.seed))
    assert trials.node_id.notna().all() and trials.node_id.astype(str).str.len().gt(0).all()
    c = MlflowClient(mlflow_s3.uri)
    exp = c.get_experiment_by_name("auto-two-nodes")
    runs = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("dcnn.role") == "trial"]
    assert len(runs) == len(trials) and all(r.info.status == "FINISHED" for r in runs)
    report = (storage / "auto-two-nodes/report/report.md").read_text()
    assert "## Seeds spent where questions were open" in report and "decision(E)" in report


def _files(folder: Path, name: str) -> list:
    return [str(p) for p in Path(folder).rglob(name)]


def test_two_nodes_with_object_storage_share_no_folder(tmp_path, two_nodes, s3_server, mlflow_s3, monkeypatch):
    """Figure: the two-node study again, with `--storage s3://...` and an MLflow server that keeps
    artifacts in the bucket.  No folder is shared: each worker node has its own Ray temp folder, working
    folder and environment, and the driver (on the head) has no storage folder at all; trials checkpoint
    into the bucket, the driver's side (its working folder, the head's Ray folder) holds no checkpoint,
    and the report is built from the bucket and stored there.  The parent run's report artifacts read
    back through the server by a client that has no AWS credentials at all."""
    bucket, server = "cluster", mlflow_s3
    driver_cwd = tmp_path / "driver-cwd"
    driver_cwd.mkdir()
    study = write_study(tmp_path / "s3.yaml", ONE_ARM, REF, seeds=(0, 1), fixed={"epochs": 1})
    proc = ablate("--study", study, "--address", two_nodes.address, "--storage", f"s3://{bucket}/res",
                  "--tracking-uri", server.uri, "--experiment", "s3-nodes", env=s3_server.env, cwd=driver_cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    objects = s3_server.objects(bucket)
    trials = pd.read_csv(io.BytesIO(objects["res/s3-nodes/report/trials.csv"]))
    assert len(trials) == 2 and trials.finished.all(), trials
    checkpoints = {k.split("/")[2] for k in objects if k.startswith("res/s3-nodes/") and k.endswith("trainer.pt")}
    assert len(checkpoints) == 2  # every trial checkpointed into the bucket
    # each trial worked in its worker node's own folders; no checkpoint is on the driver's side
    head_tmp, worker_tmps = two_nodes.temp_dirs[0], two_nodes.temp_dirs[1:]
    worked = {p.name for t in worker_tmps for p in t.rglob("s3-nodes/working_dirs/*")}
    assert worked == checkpoints, (worked, checkpoints)
    for folder in (driver_cwd, head_tmp, two_nodes.cwds[0]):
        assert not _files(folder, "trainer.pt"), folder
    assert os.listdir(driver_cwd) == [] and not _files(tmp_path, "params.json")

    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    c = MlflowClient(server.uri)
    exp = c.get_experiment_by_name("s3-nodes")
    parent = [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("dcnn.role") == "study"][0]
    got = c.download_artifacts(parent.info.run_id, "report/report.md", str(tmp_path))
    assert open(got, "rb").read() == objects["res/s3-nodes/report/report.md"]
    assert any(k.startswith("mlartifacts/") and k.endswith("report/report.md") for k in objects)
    for r in c.search_runs([exp.experiment_id]):
        assert not any(s3_server.SECRET in v for v in [*r.data.params.values(), *r.data.tags.values()])


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
