"""A trial's own record of itself, stored in every checkpoint beside the trainer's state.

Why: Tune keeps a trial's `params.json` and `result.json` in the driver's staging folder and copies them over
the stored ones (`ray/tune/execution/experiment_state.py`, sync_up) with writes that are not atomic, at most
every few seconds.  A driver killed mid-copy leaves them empty or cut; one killed between copies leaves a
`result.json` epochs older than the trial's newest checkpoint, which the trainable wrote itself.  Resuming
then appends to the stale file (an epoch is lost from the study folder, though MLflow has it) or leaves an
emptied one as it is (the report cannot read the trial).  Issue 27.

So each checkpoint folder holds `RECORD_FILE`: the trial's config (what `params.json` holds) and every result
the trial reported up to that checkpoint (what `result.json` holds, less the keys Tune adds).  Written before
the trainer's state, atomically: a checkpoint whose `trainer.pt` is whole has a whole record.  The
orchestrator rebuilds a trial's files from it (orchestrator/trial_files.py).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

RECORD_FILE = "trial_record.json"
RECORD_VERSION = 1


def write_record(folder: str | os.PathLike, config: dict, trial_id: str, results: list[dict]) -> Path:
    """Write the record into a checkpoint folder (temporary file, then rename: never a cut-off record)."""
    from ray.tune.utils.util import SafeFallbackEncoder  # what Tune's JSON logger encodes results with

    path = Path(folder) / RECORD_FILE
    tmp = path.with_name(path.name + ".tmp")
    text = json.dumps({"version": RECORD_VERSION, "trial_id": trial_id, "config": config, "results": results},
                      cls=SafeFallbackEncoder)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def parse_record(text: str) -> dict | None:
    """The record in `text`, or None when it is cut off or not a record (never an exception)."""
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict) \
            or not isinstance(record.get("results"), list):
        return None
    return record


def read_record(folder: str | os.PathLike) -> dict | None:
    """The record of a local checkpoint folder, or None (a checkpoint written before records existed)."""
    path = Path(folder) / RECORD_FILE
    try:
        return parse_record(path.read_text())
    except (OSError, UnicodeDecodeError):
        return None
