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


def _no_keys(text: str) -> None:
    """A recipe names credentials only as references (roles, a Secret), never as values."""
    import re

    assert not re.search(r"AKIA[0-9A-Z]{12,}", text)
    assert not re.search(r"(?i)(aws_secret_access_key|aws_access_key_id)\s*[:=]\s*(?!\.\.\.)\S", text)  # "..." placeholders only


def test_cluster_launcher_object_storage_variant_shares_no_folder():
    """The S3 variant: the same nodes and installs as the shared-FS recipe, no NFS mount, every node's
    rights from its instance profile, MLflow artifacts proxied to the bucket, the study on s3://."""
    base = yaml.safe_load((ROOT / "cluster/ray-cluster-gpu.yaml").read_text())
    text = (ROOT / "cluster/ray-cluster-gpu-s3.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert cfg["available_node_types"].keys() == base["available_node_types"].keys()
    for name, node in cfg["available_node_types"].items():
        assert node["node_config"]["InstanceType"] == base["available_node_types"][name]["node_config"]["InstanceType"]
        assert node["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")
    setup = "\n".join(cfg["setup_commands"])
    assert "mount" not in setup and "/mnt/shared" not in text
    assert [c for c in base["setup_commands"] if c.startswith("pip")] == cfg["setup_commands"]
    head = "\n".join(cfg["head_setup_commands"])
    assert "--host 127.0.0.1" in head and "--artifacts-destination s3://BUCKET/mlartifacts" in head
    assert "--storage s3://BUCKET/studies" in text and "--tracking-uri http://127.0.0.1:5000" in text
    assert cfg["head_start_ray_commands"] == base["head_start_ray_commands"]
    assert cfg["worker_start_ray_commands"] == base["worker_start_ray_commands"]
    _no_keys(text)


def test_kuberay_object_storage_variant_shares_no_volume():
    """The S3 variant: no ReadWriteMany volume, every pod under the IRSA service account with the store's
    settings (and an optional Secret for S3-compatible stores) from the environment; MLflow proxies
    artifacts to the bucket."""
    text = (ROOT / "cluster/kuberay-raycluster-s3.yaml").read_text()
    docs = {d["kind"]: d for d in yaml.safe_load_all(text)}
    assert docs["ServiceAccount"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")
    assert docs["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteOnce"]  # the head's MLflow DB only
    ray = docs["RayCluster"]
    assert ray["spec"]["rayVersion"] == "2.60.0"
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]
    workers = [g["template"]["spec"] for g in ray["spec"]["workerGroupSpecs"]]
    for pod in [head, *workers]:
        assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]
        c = pod["containers"][0]
        assert c["image"] == "REGISTRY/dcnn-ablate:0.1.0"
        refs = c["envFrom"]
        assert {"configMapRef": {"name": docs["ConfigMap"]["metadata"]["name"]}} in refs
        assert {"secretRef": {"name": "dcnn-s3-credentials", "optional": True}} in refs
    assert all("volumes" not in w and "volumeMounts" not in w["containers"][0] for w in workers)
    assert ray["spec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    server = head["containers"][0]["lifecycle"]["postStart"]["exec"]["command"][-1]
    assert "--host 127.0.0.1" in server and "--artifacts-destination s3://BUCKET/mlartifacts" in server
    assert "--storage s3://BUCKET/studies" in text and "/mnt/shared" not in text
    _no_keys(text)
