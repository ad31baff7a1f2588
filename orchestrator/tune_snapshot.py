"""Tune's experiment snapshot kept resumable through a full disk and a stopped driver.

Tune records a study's state (its trials, their status and checkpoints, the searcher's state) in files at
the root of the experiment folder (`experiment_state-<session>.json`, `basic-variant-state-<session>.json`,
a searcher's `.pkl`), written in its driver's local staging folder and copied over the stored ones many
times a minute.  Two ways this goes wrong on `--resume` were met on Ray 2.60
(tests/test_faults.py::test_disk_fills_mid_study):

- **a cut-off snapshot**: the copy that meets a full disk leaves the stored file truncated.  Tune then logs
  "Failed to restore the run state" and silently *starts the study again from nothing* beside the old trial
  folders: every trained epoch is thrown away and each trial gets a second MLflow run.
- **a stale decision**: a trial that stopped while its checkpoint was being saved leaves a STOP in
  `TuneController._cached_trial_decisions`, which is saved with the runner state and restored as is.  The
  resumed trial is then stopped right after its first new checkpoint, an epoch or more before its end,
  and Tune reports it complete.

`SnapshotKeeper` (a Tune callback in the driver) copies every whole snapshot, all its files in one atomic
write, to `KEPT_FILE` beside them (on a file system: an object store never holds a cut-off object); `prepare_resume` (before `Tuner.restore`) puts that copy back where a
stored file is cut off, refuses clearly when there is none, and drops decisions cached for actors of the
driver that is gone.  A kept copy may be older than the newest checkpoints: a trial's restore then takes
its newest complete checkpoint (`DCNNTrainable.restore`), and MLflow keeps one point per epoch.
`counting_unstarted_trials` (around `Tuner.restore`) turns Tune's FileNotFoundError warnings for trials that
had recorded no result into a count the resume states in one line.
"""
from __future__ import annotations

import base64
import contextlib
import fnmatch
import json
import logging
import pickletools
import time
from pathlib import Path

from ray import tune

log = logging.getLogger("dcnn.orchestrator")

# No .json or .pkl suffix: Tune's restore downloads every root *.json and *.pkl into the new driver's staging
# folder (ray.tune.execution.experiment_state.sync_down_experiment_state) and every later sync copies them back
# over the stored ones, so a copy named *.json was itself overwritten, not atomically, by a stale one: a driver
# killed during that copy left it empty along with the state files (seen once in the kill matrix, at the end of
# a resumed study). Named so, Tune never touches it.
KEPT_FILE = ".dcnn-tune-snapshot"
LEGACY_KEPT_FILE = ".dcnn-tune-snapshot.json"  # the name of the kept copy before: read when it is the only one
# what Tune's resume reads back from the experiment root (ray.tune.execution.experiment_state
# .sync_down_experiment_state: every root *.json and *.pkl); tuner.pkl is written once, before any trial
SNAPSHOT_PATTERNS = ("*.json", "*.pkl")
STATE_PATTERN = "experiment_state-*.json"
# Tune writes its searcher's and callbacks' state to `.<uuid>-tmp-<name>` and renames it (ray/tune/utils/util.py:
# _atomic_save) in the driver thread while its background sync copies the staging folder to the experiment
# folder: a sync that lists the folder mid-write leaves a copy of the temporary file there, whole or cut off,
# under a name no later write replaces (seen once in CI after a resumed study). Tune never reads it back by
# that name; neither does a resume here.
TUNE_TEMP_PATTERN = ".*-tmp-*"
KEEP_EVERY_S = 5.0  # at most one kept copy per this many seconds (and one at the end of the study)
# and at most this share of the driver's time: Tune's state grows ≈ 35 KB per trial (a 1,000-trial study:
# 35 MB, a copy 0.3 s here), so a large study keeps its copy less often rather than stalling the driver
KEEP_TIME_SHARE = 0.05


def _is_state_file(name: str) -> bool:
    return ("/" not in name and name not in (KEPT_FILE, LEGACY_KEPT_FILE)
            and not fnmatch.fnmatch(name, TUNE_TEMP_PATTERN)
            and any(fnmatch.fnmatch(name, p) for p in SNAPSHOT_PATTERNS))


def is_whole(data: bytes) -> bool:
    """A snapshot file that is complete: JSON that parses, or a pickle that reaches its STOP opcode
    (scanned with pickletools, never unpickled).  Told apart by content, not name: Tune's searcher state
    `basic-variant-state-*.json` is a pickle."""
    try:
        if data[:1] == b"\x80":  # a pickle of protocol 2 or later
            for _ in pickletools.genops(data):
                pass
        else:
            json.loads(data)
    except (ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
        return False
    return bool(data)


class SnapshotKeeper(tune.Callback):
    """Copies Tune's snapshot from the driver's staging folder (written whole, in this thread, just before
    `on_step_end`) into one file in the experiment folder, atomically.  A copy that fails (the disk is
    full) leaves the previous one in place: the study is still resumable from it."""

    def __init__(self, experiment_dir, every_s: float = KEEP_EVERY_S):
        self.experiment_dir, self.every_s = experiment_dir, every_s
        self._seen: dict[str, int] = {}
        self._last = 0.0
        self._cost = 0.0  # seconds the last copy took
        self._due = False  # a trial checkpointed since the last copy
        self._trials = None

    def on_step_begin(self, iteration, trials, **info):
        self._trials = trials

    def get_state(self):
        """Tune asks every callback for its state right after writing its own to the staging folder and before
        copying that folder over the stored one (ray/tune/execution/tune_controller.py: save_to_dir): the one
        moment at which the copy kept here is never older than a stored file a kill could cut.  Nothing of
        this callback's own needs saving (None)."""
        waited = time.monotonic() - self._last
        if self._trials and (self._due or not self._seen) and waited >= self._cost / KEEP_TIME_SHARE:
            self._keep(self._trials)  # after a checkpoint, and the very first state
        return None

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # the next copy is due at once: a copy older than every checkpoint of a trial would make --resume start
        # that trial from nothing (a full disk stops the copies right after; tests/test_faults.py)
        self._due = True

    def on_step_end(self, iteration, trials, **info):
        waited = time.monotonic() - self._last
        if waited >= self._cost / KEEP_TIME_SHARE and (self._due or waited >= self.every_s):
            self._keep(trials)

    def on_experiment_end(self, trials, **info):
        self._keep(trials)

    def _keep(self, trials) -> None:
        if not trials or not self.experiment_dir.is_local:
            return  # an object store writes each object whole (one PUT) or not at all: nothing to keep
        staging = Path(trials[0].storage.experiment_driver_staging_path)
        files = {p.name: p for p in staging.glob("*") if p.is_file() and _is_state_file(p.name)}
        stamp = {n: p.stat().st_mtime_ns for n, p in files.items()}
        if not any(fnmatch.fnmatch(n, STATE_PATTERN) for n in files) or stamp == self._seen:
            return
        self._last = start = time.monotonic()
        blobs = {n: p.read_bytes() for n, p in files.items()}
        if not all(is_whole(b) for b in blobs.values()):
            return  # not expected (staging files are written whole before this hook); keep the last copy
        record = {"kept_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "files": {n: base64.b64encode(b).decode("ascii") for n, b in blobs.items()}}
        try:
            self.experiment_dir.write_text(KEPT_FILE, json.dumps(record))
        except OSError as e:  # a full disk: the previous copy is intact (write_text replaces atomically)
            log.debug("could not keep Tune's snapshot (%s); the previous copy stays", e)
            return
        self._seen = stamp
        self._cost = time.monotonic() - start
        self._due = False


def prepare_resume(experiment_dir) -> list[str]:
    """Make the stored Tune snapshot of `experiment_dir` (a `Storage`) safe to resume; returns what was
    repaired, one line each.  Raises ValueError, before anything is changed, when a snapshot file is cut
    off and no whole kept copy exists."""
    notes: list[str] = []
    names = [n for n in experiment_dir.glob(*SNAPSHOT_PATTERNS) if _is_state_file(n)]
    cut = [n for n in names if not is_whole(experiment_dir.read_bytes(n))]
    if cut:
        kept = _kept_snapshot(experiment_dir)
        # a cut-off experiment_state file the copy lacks is a newer one, deleted so Tune does not pick it
        # (by name); any other cut-off file must come back from the copy
        if kept is None or any(n not in kept[1] and not fnmatch.fnmatch(n, STATE_PATTERN) for n in cut):
            raise ValueError(
                f"--resume: Tune's record of the study in {experiment_dir} is cut off ({', '.join(cut)}; a full "
                f"disk?) and no whole copy of it was kept ({KEPT_FILE}), so which trials ran cannot be told. "
                f"Nothing was changed; run the study again under a new --experiment")
        at, files = kept
        for name, data in files.items():
            experiment_dir.write_bytes(name, data)
        for name in cut:
            if name not in files:
                experiment_dir.delete(name)
        notes.append(f"Tune's record of the study was cut off ({', '.join(cut)}; a full disk?): resumed from "
                     f"the whole copy kept at {at}; trials continue from their newest complete checkpoints")
    for name in sorted(n for n in experiment_dir.glob(STATE_PATTERN) if _is_state_file(n)):
        state = json.loads(experiment_dir.read_bytes(name))
        runner = state.get("runner_data", {})
        stale = {k: runner.get(k) for k in ("_cached_trial_decisions", "_queued_trial_decisions") if runner.get(k)}
        if stale:
            for key in stale:
                runner[key] = {}
            experiment_dir.write_text(name, json.dumps(state))
            trials = sorted({t for d in stale.values() for t in d})
            notes.append(f"dropped decisions Tune had pending for trial(s) {', '.join(trials)} of the stopped "
                         f"driver ({stale}): they would stop those trials after their first new checkpoint")
    return notes


class UnstartedTrials(logging.Filter):
    """Tune's restore reads back every trial's results (`ray.tune.analysis.experiment_analysis`,
    `_fetch_trial_dataframes`) and warns "Failed to fetch metrics for N trial(s) ... FileNotFoundError(...)"
    for each trial that had recorded no result when the driver stopped (most often one still waiting for a
    slot).  Nothing is wrong with those: they run from their first epoch now.  This filter drops such a
    warning and counts its trials (`count`), so the resume can say so in one plain line; a warning that names
    any other error passes unchanged."""

    LOGGER = "ray.tune.analysis.experiment_analysis"

    def __init__(self):
        super().__init__()
        self.count = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Failed to fetch metrics for"):
            return True
        trials = [line for line in message.splitlines()[1:] if line.startswith("- ")]
        if not trials or not all("FileNotFoundError(" in line for line in trials):
            return True
        self.count += len(trials)
        return False


@contextlib.contextmanager
def counting_unstarted_trials():
    """While Tune restores a study: its warnings about trials without results are counted
    (`UnstartedTrials`), not printed."""
    unstarted = UnstartedTrials()
    logger = logging.getLogger(UnstartedTrials.LOGGER)
    logger.addFilter(unstarted)
    try:
        yield unstarted
    finally:
        logger.removeFilter(unstarted)


def _kept_snapshot(experiment_dir) -> tuple[str, dict[str, bytes]] | None:
    """(kept_at, files) of the whole kept copy: KEPT_FILE, else one an earlier version kept; None if neither."""
    for name in (KEPT_FILE, LEGACY_KEPT_FILE):
        if not experiment_dir.is_file(name):
            continue
        try:
            record = json.loads(experiment_dir.read_bytes(name))
            files = {n: base64.b64decode(b) for n, b in record["files"].items()}
        except (ValueError, KeyError, TypeError):
            continue
        if all(_is_state_file(n) and is_whole(b) for n, b in files.items()):
            return record.get("kept_at", "?"), files
    return None
