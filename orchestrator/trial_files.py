"""A trial's `params.json` and `result.json`, read whole or made whole again from its checkpoint's record.

Tune copies those two files from the driver's staging folder over the stored ones with writes that are not
atomic, every few seconds; a killed driver can leave them empty, cut off, or epochs behind the trial's newest
checkpoint (trainables/trial_record.py says how, issue 27).  Every checkpoint folder holds the trial's own
record (config and every result reported up to it), so what Tune's copy lost is still known:

- `read_trial` merges a trial folder's files with its newest record: the report reads trials through it
  and names what it rebuilt (the report never writes into trial folders);
- `repair_trials` writes the merged files back (atomically) — at `--resume`, before Tune reads them back
  into its staging folder and appends to them, and again after the study, before its report.

Lines cut off by a kill are dropped, epochs the file lacks are taken from the record (marked
`rebuilt_from`), and lines the file holds are kept as they are, replays included (the report keeps the
last record of an epoch).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from orchestrator.storage import Storage
from trainables.trial_record import RECORD_FILE, parse_record

PARAMS_FILE, RESULT_FILE = "params.json", "result.json"
_CHECKPOINT = re.compile(r"^checkpoint_(\d+)$")
# what the study folder holds besides trial folders (orchestrator/runner.py, report.py)
NOT_TRIALS = {"report", "tuning"}


@dataclass
class TrialFiles:
    """One trial folder's files as the report should read them."""

    folder: str
    config: dict | None  # None: params.json unreadable and no record holds the config
    results: list[dict]
    notes: list[str] = field(default_factory=list)  # what was damaged and what was done about it
    params_text: str | None = None  # the files' repaired text, where they need one (None: leave as is)
    result_text: str | None = None

    @property
    def damaged(self) -> str:
        return "; ".join(self.notes)


def parse_results(text: str) -> tuple[list[dict], list[int], int]:
    """(records, numbers of the lines that are not a JSON object, number of non-empty lines) of a
    result.json: a line cut off by a kill during the write is not JSON; the lines around it are still data."""
    rows, bad, total = [], [], 0
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        total += 1
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            rows.append(record)
        else:
            bad.append(number)
    return rows, bad, total


def _dumps_params(config: dict) -> str:
    """params.json as Tune's JSON logger writes it (ray/tune/logger/json.py: indent 2, sorted keys)."""
    from ray.tune.utils.util import SafeFallbackEncoder

    return json.dumps(config, indent=2, sort_keys=True, cls=SafeFallbackEncoder)


def _epoch(row: dict) -> float:
    value = row.get("epoch")
    return float(value) if isinstance(value, (int, float)) else 0.0


def merge(folder: str, params_text: str | None, result_text: str | None,
          record: tuple[str, dict] | None) -> TrialFiles:
    """The trial's config and results from its two files (None: missing) and its newest record
    (checkpoint folder name, record); the repaired texts where a file was damaged or behind."""
    notes: list[str] = []
    config, params_out, what = None, None, "missing"
    if params_text is not None:
        what = "empty" if not params_text.strip() else "cut off or not JSON"
        try:
            loaded = json.loads(params_text)
            config = loaded if isinstance(loaded, dict) else None
            what = f"holds a {type(loaded).__name__}, not a trial's config mapping"
        except ValueError:
            pass
    if config is None:
        if record is not None:
            config = record[1]["config"]
            params_out = _dumps_params(config)
            notes.append(f"{PARAMS_FILE} {what}: rebuilt from {record[0]}/{RECORD_FILE}")
        else:
            notes.append(f"{PARAMS_FILE} {what} and no checkpoint records the trial: its config is lost")

    rows, bad, total = parse_results(result_text or "")
    have = {_epoch(r) for r in rows}
    rebuilt = []
    if record is not None:
        name, rec = record
        trial_id = rec.get("trial_id") or next((r.get("trial_id") for r in rows if r.get("trial_id")), "")
        for r in rec["results"]:
            if isinstance(r, dict) and _epoch(r) not in have:
                epoch = r.get("epoch")
                rebuilt.append({**r, "trial_id": trial_id, "training_iteration": epoch,
                                "done": bool(r.get("done", False)), "rebuilt_from": f"{name}/{RECORD_FILE}"})
    result_out = None
    if bad:
        kept = (f"kept the {len(rows)} complete line(s), last complete epoch {int(max(map(_epoch, rows)))}" if rows
                else "nothing kept")
        notes.append(f"{RESULT_FILE}: line {', '.join(map(str, bad))} of {total} cut off or not JSON (a kill during "
                     f"the write?); {kept}")
    if rebuilt:
        state = "missing" if result_text is None else "empty" if not rows else "lacked"
        notes.append(f"{RESULT_FILE} {state}: epoch(s) {', '.join(str(r.get('epoch')) for r in rebuilt)} rebuilt from "
                     f"{record[0]}/{RECORD_FILE}")
    if bad or rebuilt:
        rows = sorted(rows + rebuilt, key=_epoch)  # stable: replayed epochs keep their order
        result_out = "".join(json.dumps(r) + "\n" for r in rows)
    return TrialFiles(folder, config, rows, notes, params_out, result_out)


def _newest_record(readable: dict[str, str]) -> tuple[str, dict] | None:
    """The record of the newest checkpoint folder whose record is whole, from {checkpoint folder: text}."""
    for name in sorted(readable, key=lambda n: int(_CHECKPOINT.match(n).group(1)), reverse=True):
        record = parse_record(readable[name])
        if record is not None:
            return name, record
    return None


def trial_folders(files: list[str]) -> dict[str, dict[str, str]]:
    """{trial folder: {relative path inside it: path}} from a study's file list: the folders holding a
    params.json, a result.json or a checkpoint record."""
    out: dict[str, dict[str, str]] = {}
    for rel in files:
        parts = rel.split("/")
        if parts[0] in NOT_TRIALS:
            continue
        inner = "/".join(parts[1:])
        if inner in (PARAMS_FILE, RESULT_FILE) or (len(parts) == 3 and parts[2] == RECORD_FILE
                                                   and _CHECKPOINT.match(parts[1])):
            out.setdefault(parts[0], {})[inner] = rel
    return out


def _read(study: Storage, rel: str | None) -> str | None:
    if rel is None:
        return None
    try:
        return study.read_bytes(rel).decode("utf-8", errors="replace")
    except OSError:
        return None


def read_trials(study: Storage | str | Path) -> list[TrialFiles]:
    """Every trial folder of a study (a `Storage` or a local folder), merged with its newest record."""
    study = study if isinstance(study, Storage) else Storage.resolve(str(study), absolute=False)
    out = []
    for folder, inner in sorted(trial_folders(study.files()).items()):
        records = {p.split("/")[0]: _read(study, rel) for p, rel in inner.items() if p.endswith(RECORD_FILE)}
        out.append(merge(folder, _read(study, inner.get(PARAMS_FILE)), _read(study, inner.get(RESULT_FILE)),
                         _newest_record({k: v for k, v in records.items() if v is not None})))
    return out


def repair_trials(study: Storage) -> list[str]:
    """Write back every trial file that `read_trials` had to rebuild; returns one line per trial repaired."""
    notes = []
    for trial in read_trials(study):
        if trial.params_text is None and trial.result_text is None:
            continue
        if trial.params_text is not None:
            study.write_text(f"{trial.folder}/{PARAMS_FILE}", trial.params_text)
        if trial.result_text is not None:
            study.write_text(f"{trial.folder}/{RESULT_FILE}", trial.result_text)
        notes.append(f"{trial.folder}: {trial.damaged}")
    return notes
