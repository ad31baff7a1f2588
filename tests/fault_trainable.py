"""The class trainable with faults injected, for tests/test_faults.py (issue 8); test code only.

A study runs it with DCNN_TRAINABLE=fault_trainable:FaultInjectingTrainable and this folder (tests/) on the
PYTHONPATH of the driver, which its Ray workers inherit (`fault_env`).  (`tests` itself is no importable
package name: some installed distributions ship a top-level `tests` package that would shadow it.)

The faults are the JSON list in $DCNN_FAULT_INJECT: {"action": "kill"|"raise"|"fill", "epoch": k, "where":
{config key: value}, "once": marker file, "path": file}.  "kill" SIGKILLs the trial's worker after epoch k
was reported and before its checkpoint is written; "raise" makes the model's forward raise in epoch k;
"fill" fills the disk holding `path` (writing that file until the disk is full) just before epoch k's
checkpoint is written.  Everything else is the production trainable's, so what the fault tests find
survives is what a study survives.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

from trainables.dcnn_trainables import DCNNTrainable

FAULT_ENV = "DCNN_FAULT_INJECT"
TRAINABLE = "fault_trainable:FaultInjectingTrainable"


def fault_env(faults: list[dict] | None = None) -> dict:
    """Environment for a driver process whose study runs FaultInjectingTrainable: the class, where its
    module is (the repository and tests/ on PYTHONPATH, inherited by the Ray workers) and the faults."""
    here = Path(__file__).resolve().parent
    env = {"DCNN_TRAINABLE": TRAINABLE, "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)])}
    if faults:
        env[FAULT_ENV] = json.dumps(faults)
    return env


def faults_due(config: dict, action: str, epoch: int) -> list[dict]:
    """The faults of $DCNN_FAULT_INJECT that `action` at `epoch` of the trial with `config` triggers; a
    fault with "once" triggers in the first process that creates its marker file, never again."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return []
    out = []
    for f in json.loads(spec):
        if f.get("action") != action or int(f.get("epoch", 1)) != epoch:
            continue
        if any(str(config.get(k)) != str(v) for k, v in (f.get("where") or {}).items()):
            continue
        once = f.get("once")
        if once:
            try:
                fd = os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                continue
            os.write(fd, f"{action} at epoch {epoch} pid {os.getpid()} {time.time()}\n".encode())
            os.close(fd)
        out.append(f)
    return out


def fill_disk(path: str) -> None:
    """Append zeros to `path` until its disk is full (the "fill" fault)."""
    chunk = b"\0" * (1 << 20)
    with open(path, "ab", buffering=0) as fh:
        while True:
            try:
                fh.write(chunk)
            except OSError:
                chunk = chunk[: len(chunk) // 2]
                if len(chunk) < 512:
                    return


class FaultInjectingTrainable(DCNNTrainable):
    """DCNNTrainable with the faults of $DCNN_FAULT_INJECT, at the points a real failure would hit."""

    def step(self) -> dict:
        epoch = self.trainer.epoch + 1
        if not self.trainer.done and faults_due(self.config, "raise", epoch):
            def broken(*args, **kwargs):
                raise RuntimeError(f"injected fault: the model raised in epoch {epoch}")
            self.trainer.model.forward = broken
        return super().step()

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        for fault in faults_due(self.config, "fill", self.trainer.epoch):
            fill_disk(fault["path"])
        if faults_due(self.config, "kill", self.trainer.epoch):
            os.kill(os.getpid(), signal.SIGKILL)  # epoch reported, its checkpoint not yet durable
        return super().save_checkpoint(checkpoint_dir)
