"""Real Ray clusters and an MLflow server on this machine, for tests; stopped by process group.

Each `ray start --block` runs in its own session, so its GCS, raylet and workers share its process
group and can be stopped without `ray stop` (which would kill every Ray process on the host).
"""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


# Ports for this test process's clusters and servers come from its own window below the kernel's ephemeral
# range (Linux: 32768 and up), where nothing takes one by itself: an outgoing connection, or a Ray started with
# random ports (tests/conftest.py), draws only from the ephemeral range, so a range drawn here stays free until
# the node binds it.  Each pytest-xdist worker ("gw0", "gw1", ...) has its own window, so the suite's
# processes never draw the same port; the scan starts at a random offset and checks each port, for a second
# suite run at the same time.
_WINDOW_WIDTH, _WINDOWS = 2700, 8  # 10100-31699: above `ray start --head`'s client server port (10001)
_k = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0) % _WINDOWS
WINDOW = range(10100 + _WINDOW_WIDTH * _k, 10100 + _WINDOW_WIDTH * (_k + 1))

# ports handed out in this process: a node's worker range is bound only when its workers start, so a
# later draw must not overlap an earlier one even though the OS still calls those ports free
_HANDED_OUT: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def free_port_range(width: int = 40) -> int:
    """Start of `width` consecutive free ports of this process's WINDOW, none handed out before."""
    span = len(WINDOW) - width + 1
    first = random.randrange(span)
    for i in range(span):
        base = WINDOW.start + (first + i) % span
        ports = range(base, base + width)
        if not _HANDED_OUT.intersection(ports) and all(_bindable(p) for p in ports):
            _HANDED_OUT.update(ports)
            return base
    raise RuntimeError(f"no {width} free consecutive ports in {WINDOW.start}-{WINDOW.stop - 1}")


def free_port() -> int:
    """A free port of this process's WINDOW, not handed out before."""
    return free_port_range(1)


def _node_ports() -> list[str]:
    """One block of free ports: 40 worker ports, then the node's six service ports.  (Drawing the service
    ports separately could land one inside the worker range, which `ray start` refuses.)"""
    base = free_port_range(46)
    service = [str(base + 40 + k) for k in range(6)]
    return ["--node-manager-port", service[0], "--object-manager-port", service[1],
            "--min-worker-port", str(base), "--max-worker-port", str(base + 39),
            "--dashboard-agent-listen-port", service[2], "--dashboard-agent-grpc-port", service[3],
            "--metrics-export-port", service[4], "--runtime-env-agent-port", service[5]]


def _stop_group(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pass
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


class LocalRayCluster:
    """A head and worker nodes started with `ray start --block` (each `--num-cpus`, `--num-gpus`)."""

    def __init__(self, log_dir: Path, nodes: list[dict]):
        self.log_dir, self.nodes = Path(log_dir), nodes
        self.procs: list[subprocess.Popen] = []
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], name: str, node: dict) -> None:
        """`node` may give the node its own environment ("env"), working folder ("cwd") and Ray temp
        folder ("temp_dir": sessions, logs, trial working folders), as a separate machine would have."""
        log = open(self.log_dir / f"{name}.log", "w")
        if node.get("temp_dir"):
            args = [*args, "--temp-dir", str(node["temp_dir"])]
        self.procs.append(subprocess.Popen(["ray", "start", "--block", "--disable-usage-stats", *args],
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                           env=node.get("env", ENV), cwd=node.get("cwd")))

    def node_count(self) -> int:
        code = ("import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False);"
                "print(sum(n['Alive'] for n in ray.nodes()))")
        try:
            out = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True,
                                 timeout=30, env=ENV)
            return int(out.stdout.strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            return 0

    def start(self, timeout: float = 120) -> "LocalRayCluster":
        for k, node in enumerate(self.nodes):
            res = ["--num-cpus", str(node.get("cpus", 1)), "--num-gpus", str(node.get("gpus", 0))]
            if k == 0:
                self._start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                             "--include-dashboard", "false", *res, *_node_ports()], "head", node)
                self._wait_for(1, timeout)
            else:
                self._start(["--address", self.address, "--node-ip-address", "127.0.0.1", *res, *_node_ports()],
                            f"worker{k}", node)
        self._wait_for(len(self.nodes), timeout)
        return self

    def _wait_for(self, n: int, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                break
            if self.node_count() >= n:
                return
            time.sleep(1)
        logs = "\n".join(f.read_text()[-2000:] for f in self.log_dir.glob("*.log"))
        self.stop()
        raise RuntimeError(f"Ray cluster did not reach {n} node(s):\n{logs}")

    def stop(self) -> None:
        """Workers first (they drain through the head's GCS), then the head; by process group."""
        for proc in reversed(self.procs):
            _stop_group(proc, timeout=5)  # a SIGTERMed node drains via the GCS for ~30 s: no need
        self.procs.clear()
        # `ray start --head` records its address for later ray.init() calls; `ray stop` would remove it
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        if current.exists() and current.read_text().strip().endswith(f":{self.port}"):
            current.unlink()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]


class MlflowServer:
    """`mlflow server` on 127.0.0.1 with lean flags (one worker, no job execution: orchestrator/ui.py says why)."""

    def __init__(self, root: Path, artifacts_destination: str | None = None, env: dict | None = None):
        """`artifacts_destination` (default: a folder under root) may be an object store (s3://...): the
        server proxies artifacts there with its own credentials (`env`); clients never need them."""
        self.root, self.port = Path(root), free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.artifacts = artifacts_destination or str(self.root / "artifacts")
        self.env = env or {}
        self.proc = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**ENV, **self.env, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.proc = subprocess.Popen(
            ["mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", self.artifacts],
            stdout=open(self.root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError("mlflow server did not start:\n" + (self.root / "server.log").read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, timeout=20)


class S3Server:
    """moto's standalone S3-compatible server on 127.0.0.1 (in memory), stopped by process group.

    `env` is what a user of an S3-compatible store sets: credentials and the endpoint in the SDK's
    standard variables.  The secret is distinctive so tests can assert it is never stored anywhere."""

    KEY, SECRET = "dcnn-test-key-id", "dcnn-test-SECRET-5f2c9e71"

    def __init__(self, log_dir: Path):
        self.log_dir, self.port = Path(log_dir), free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc = None

    @property
    def credentials(self) -> dict:
        return {"AWS_ACCESS_KEY_ID": self.KEY, "AWS_SECRET_ACCESS_KEY": self.SECRET}

    @property
    def env(self) -> dict:
        return {**self.credentials, "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def start(self, timeout: float = 60) -> "S3Server":
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(self.log_dir / "moto.log", "w"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env=ENV)
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            try:
                self.client().list_buckets()
                return self
            except Exception:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError("moto server did not start:\n" + (self.log_dir / "moto.log").read_text()[-3000:])

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.KEY, aws_secret_access_key=self.SECRET)

    def bucket(self, name: str) -> str:
        c = self.client()
        if name not in {b["Name"] for b in c.list_buckets()["Buckets"]}:
            c.create_bucket(Bucket=name)
        return name

    def objects(self, bucket: str, prefix: str = "") -> dict:
        """{key: content} of every object under prefix (one deleted while listing is left out)."""
        c = self.client()
        keys = [o["Key"] for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
                for o in page.get("Contents", [])]
        out = {}
        for k in keys:
            try:
                out[k] = c.get_object(Bucket=bucket, Key=k)["Body"].read()
            except c.exceptions.NoSuchKey:
                continue
        return out

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, timeout=10)
