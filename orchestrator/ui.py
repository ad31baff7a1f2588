"""`make ui`: the MLflow UI over a study store, with links that open each study on its runs table.

MLflow 3.17's UI opens every experiment in its "GenAI" view (an Overview of traces: "No data" for our
training runs).  Which view it shows comes from the sidebar's GenAI / Model training switch: the URL
parameter `workflowType=machine_learning`, else the switch's last setting in this browser (default GenAI);
the experiment's `mlflow.experimentKind` tag (set by `tracking.ensure_experiment`) is not consulted by
this version.  So we print each experiment's link with the parameter, then serve the UI
(one worker, no job execution: the MLflow server uses little of the two cores the trials share).

    python -m orchestrator.ui --storage results [--host 127.0.0.1] [--port 5000]
"""
from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path

ML_VIEW = "workflowType=machine_learning"


def experiment_url(base_url: str, experiment_id: str) -> str:
    """Link to an experiment's runs table (Model training view)."""
    return f"{base_url.rstrip('/')}/#/experiments/{experiment_id}?{ML_VIEW}"


def list_experiments(db: Path) -> list[tuple[str, str]]:
    """(id, name) of the active experiments with runs in a sqlite MLflow store, oldest first; [] if the
    store is missing or unreadable.  Read-only SQL: no MLflow import, no schema migration."""
    if not Path(db).is_file():
        return []
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            rows = con.execute(
                "SELECT e.experiment_id, e.name FROM experiments e WHERE e.lifecycle_stage = 'active' AND "
                "EXISTS (SELECT 1 FROM runs r WHERE r.experiment_id = e.experiment_id "
                "AND r.lifecycle_stage = 'active') ORDER BY e.experiment_id").fetchall()
        finally:
            con.close()
    except sqlite3.Error:
        return []
    return [(str(i), n) for i, n in rows]


def server_command(db: Path, host: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{Path(db).resolve()}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m orchestrator.ui", description=__doc__.split("\n")[0])
    p.add_argument("--storage", default="results", help="study folder holding mlflow.db (default: results)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    db = Path(args.storage).expanduser().resolve() / "mlflow.db"
    base = f"http://{args.host}:{args.port}"
    exps = list_experiments(db)
    if not Path(db).is_file():
        print(f"note: {db} does not exist yet (run a study first); serving an empty store", flush=True)
    print(f"MLflow UI on {base} — open a study on its runs table (Model training view):", flush=True)
    for eid, name in exps:
        print(f"  {name}: {experiment_url(base, eid)}", flush=True)
    if not exps:
        print(f"  {base}/#/experiments?{ML_VIEW}", flush=True)
    print("(or pick 'Model training' in the sidebar switch once: the browser remembers it)", flush=True)
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = server_command(db, args.host, args.port)
    os.execvpe(cmd[0], cmd, env)  # replaces this process: Ctrl-C and process-group signals reach mlflow
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
