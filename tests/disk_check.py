"""Helper of tests/test_faults.py::test_disk_fills_mid_study (run inside its mount namespace): one JSON
line about the study's only trial — its MLflow run's status, error tag and logged epochs, and how many of
its checkpoint files are complete (a torch zip with its end record) or not."""
import json
import sys
import zipfile
from pathlib import Path

from mlflow.tracking import MlflowClient

uri, folder, label = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
client = MlflowClient(uri)
exp = client.get_experiment_by_name("fill")
runs = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("dcnn.role") == "trial"]
run = runs[0]
files = list(folder.glob("*/checkpoint_*/trainer.pt"))
complete = sum(1 for f in files if f.stat().st_size and zipfile.is_zipfile(f))
print(label, json.dumps({
    "trial_runs": len(runs), "trial_dirs": len(list(folder.glob("*/params.json"))),
    "status": run.info.status, "error": run.data.tags.get("error", ""),
    "epochs": sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")),
    "complete_checkpoints": complete, "incomplete_checkpoints": len(files) - complete,
    "newest_checkpoint_complete": bool(files) and zipfile.is_zipfile(max(files, key=lambda f: f.parent.name)),
    "test_force_loss": run.data.metrics.get("test_force_loss", 0.0)}))
