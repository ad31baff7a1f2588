"""The cluster recipes parse and keep their promises: package on every node, torch pinned, loopback servers."""
import yaml

from conftest import ROOT


def test_cluster_launcher_installs_package_on_every_node():
    cfg = yaml.safe_load((ROOT / "cluster/ray-cluster-gpu.yaml").read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu = [t for t in cfg["available_node_types"].values() if "g5" in t["node_config"]["InstanceType"]]
    assert gpu and gpu[0]["min_workers"] >= 1  # requests are checked against live nodes
    setup = "\n".join(cfg["setup_commands"])  # run on head and workers alike
    assert "pip install torch==2.13.0" in setup and "pip install -e ~/dcnn-ablate" in setup
    assert cfg["file_mounts"]["~/dcnn-ablate"] == "."
    assert "--host 127.0.0.1" in "\n".join(cfg["head_setup_commands"])
    assert any("--dashboard-host=127.0.0.1" in c for c in cfg["head_start_ray_commands"])
    assert any("$RAY_HEAD_IP:6379" in c for c in cfg["worker_start_ray_commands"])


def test_kuberay_cluster_runs_the_project_image_everywhere_with_shared_volume():
    docs = list(yaml.safe_load_all((ROOT / "cluster/kuberay-raycluster.yaml").read_text()))
    pvc, ray = docs
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert ray["kind"] == "RayCluster" and ray["spec"]["rayVersion"] == "2.60.0"
    pods = [ray["spec"]["headGroupSpec"]["template"]] + [g["template"] for g in ray["spec"]["workerGroupSpecs"]]
    images = {c["image"] for p in pods for c in p["spec"]["containers"]}
    assert images == {"REGISTRY/dcnn-ablate:0.1.0"}
    for p in pods:
        assert p["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert p["spec"]["containers"][0]["volumeMounts"][0]["mountPath"] == "/mnt/shared"
    gpu = ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert gpu["nvidia.com/gpu"] == "1" and ray["spec"]["workerGroupSpecs"][0]["minReplicas"] >= 1
    dockerfile = (ROOT / "cluster/Dockerfile").read_text()
    assert "rayproject/ray:2.60.0" in dockerfile and "torch==2.13.0" in dockerfile and "pip install" in dockerfile


def test_gpu_check_study_is_valid():
    import search_spaces

    study = search_spaces.load_study(str(ROOT / "benchmarks/gpu_check_study.yaml"))
    assert len(study.trial_configs()) == 2 and study.fixed["preset"] == "paper" and study.fixed["epochs"] == 1
