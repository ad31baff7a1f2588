"""A study of many tiny trials, end to end: what the driver costs per trial and where it would break.

Runs `dcnn-ablate ablate` on N trials of one epoch on a few frames (one arm, seeds 0..N-1, local Ray,
`--max-concurrent 2`), tracked in sqlite MLflow or in an MLflow server started here on 127.0.0.1, while
sampling the driver's memory; then checks that nothing was lost (every trial an MLflow run with its one
point per metric, every trial folder whole) and times the report rebuilt on its own.  Issue 27.

    python -m benchmarks.study_scale --trials 1000 --tracking sqlite --out /tmp/scale-sqlite
    python -m benchmarks.study_scale --trials 1000 --tracking server --out /tmp/scale-server

Prints a JSON line with the figures (and writes it to OUT/figures.json).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = {"epochs": 1, "n_train": 20, "n_val": 10, "n_test": 10, "batch_size": 10}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, log) -> tuple[subprocess.Popen, str]:
    """An MLflow tracking server on 127.0.0.1 (sqlite backend, one worker), as docs and tests start it."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{store / 'server.db'}", "--artifacts-destination", str(store / "art")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"{uri}/health", timeout=1).close()
            return proc, uri
        except OSError:
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("mlflow server did not start")


def run(trials: int, tracking: str, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    study = out / "scale.yaml"
    study.write_text(yaml.safe_dump({
        "description": f"{trials} tiny trials (benchmarks/study_scale.py)",
        "designs": [{"activation": ["irelu"], "denorm": [True], "rescale": [True]}],
        "reference": {"activation": "irelu", "denorm": True, "rescale": True},
        "models": ["schnet"], "seeds": list(range(trials)), "fixed": TINY}))
    server = None
    uri = f"sqlite:///{out / 'mlflow.db'}"
    if tracking == "server":
        server, uri = start_server(out, open(out / "server.log", "w"))
    experiment = "scale"
    cmd = [sys.executable, "-m", "orchestrator.cli", "ablate", "--address", "local", "--study", str(study),
           "--storage", str(out / "res"), "--tracking-uri", uri, "--experiment", experiment, "--max-concurrent", "2"]
    log_path = out / "ablate.log"
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=open(log_path, "w"), stderr=subprocess.STDOUT, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"})
    driver = psutil.Process(proc.pid)
    peak_rss, samples = 0, []
    while proc.poll() is None:
        try:
            rss = driver.memory_info().rss
        except psutil.Error:
            break
        peak_rss = max(peak_rss, rss)
        samples.append((round(time.time() - t0, 1), rss // 2**20))
        time.sleep(1.0)
    proc.wait()
    wall = time.time() - t0
    log = log_path.read_text()
    exp_dir = out / "res" / experiment
    figures = {"trials": trials, "tracking": tracking, "rc": proc.returncode, "wall_s": round(wall, 1),
               "driver_peak_rss_mib": peak_rss // 2**20,
               "driver_rss_first_last_mib": [samples[0][1], samples[-1][1]] if samples else None}
    m = re.search(r"study finished in (\d+) s", log)
    figures["tune_s"] = int(m.group(1)) if m else None
    m = re.search(r"MLflow: (\d+) logging call\(s\) sent in ([\d.]+) s of the driver's time \(([\d.]+) ms each\)", log)
    if m:
        figures.update(mlflow_calls=int(m.group(1)), mlflow_write_s=float(m.group(2)), mlflow_ms_per_call=float(m.group(3)))
    m = re.search(r"per trial \(mean\): ([\d.]+) s", log)
    figures["trial_s_mean"] = float(m.group(1)) if m else None
    if figures["tune_s"]:
        figures["driver_s_per_trial"] = round(figures["tune_s"] / trials, 3)  # study wall per trial, 2 slots
    states = sorted(exp_dir.glob("experiment_state-*.json"))
    figures["experiment_state_kib"] = states[-1].stat().st_size // 1024 if states else None
    # nothing lost: every trial a run with its one point per metric, every trial folder whole
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=50000) if r.data.tags.get("dcnn.role") == "trial"]
    seeds = sorted(int(r.data.tags["seed"]) for r in runs)
    finished = sum(r.info.status == "FINISHED" for r in runs)
    with_points = sum("energy_loss" in r.data.metrics and "test_energy_loss" in r.data.metrics for r in runs)
    sample = runs[:: max(1, len(runs) // 20)]  # the metric history of a sample of runs: exactly one point each
    one_point = all(len(client.get_metric_history(r.info.run_id, "energy_loss")) == 1 for r in sample)
    folders = list(exp_dir.glob("*/result.json"))
    whole = sum('"done": true' in f.read_text() for f in folders)
    figures.update(mlflow_runs=len(runs), mlflow_seeds_complete=seeds == list(range(trials)),
                   mlflow_finished=finished, mlflow_with_metrics=with_points, sampled_one_point_each=one_point,
                   trial_folders=len(folders), trial_folders_done=whole)
    t1 = time.time()
    rep = subprocess.run([sys.executable, "-m", "orchestrator.cli", "report", str(exp_dir)], capture_output=True,
                         text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    figures["report_rebuild_s"] = round(time.time() - t1, 1)
    figures["report_rc"] = rep.returncode
    if server is not None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
    (out / "figures.json").write_text(json.dumps(figures, indent=2))
    (out / "driver_rss.json").write_text(json.dumps(samples))
    return figures


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--tracking", choices=("sqlite", "server"), default="sqlite")
    p.add_argument("--out", type=Path, required=True, help="a new folder for the study, MLflow store and logs")
    args = p.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        p.error(f"--out {args.out}: not empty")
    print(json.dumps(run(args.trials, args.tracking, args.out.resolve())), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
