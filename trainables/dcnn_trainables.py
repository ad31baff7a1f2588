from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import ray
from ray import tune

from dcnn.config import TrainConfig
from dcnn.numerics import allocator_in_use
from dcnn.registry import resolve_config  # once per trial, here: the Trainer takes the resolved config as it is
from dcnn.train import Trainer
from search_spaces import LABEL_KEYS  # keys a study adds to label a trial; not training settings
from trainables.trial_record import read_record, write_record

CHECKPOINT_FILE = "trainer.pt"


def quiet_worker_logs() -> None:
    """Ray worker setup hook: checkpointing every epoch is intended; don't log a line for each."""
    import logging

    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)


_fresh_process = True  # the first trial of a worker process paid for starting it (Ray actor start)


def _actor_start_s() -> float:
    """Seconds from this worker process's start to its first trial's setup; 0 for a reused actor."""
    global _fresh_process
    if not _fresh_process:
        return 0.0
    _fresh_process = False
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def _placement() -> dict:
    """Threads and device from what Ray assigned this trial (not what the machine has)."""
    ctx = ray.get_runtime_context()
    cpus = ctx.get_assigned_resources().get("CPU", 1.0)
    gpu_ids = ray.get_gpu_ids()
    return {"threads": max(1, int(cpus)), "device": "cuda" if gpu_ids else "cpu",
            "gpu_ids": ",".join(str(g) for g in gpu_ids), "node_id": ctx.get_node_id(),
            "started_at": time.time(), "actor_start_s": _actor_start_s(), "malloc": allocator_in_use()}


def train_config_from_tune(config: dict) -> TrainConfig:
    """The TrainConfig of a flat Tune config; unknown or ill-typed keys raise ValueError naming them.

    `threads` and `device` default to what Ray assigned the trial; a config may still set them.
    """
    values = {k: v for k, v in config.items() if k not in LABEL_KEYS}
    for folder in config.get("plugin_path") or ():  # where the driver imported plug-in models from
        if folder not in sys.path:
            sys.path.append(folder)
    # in a Ray worker (a trial): what Ray assigned; in a driver that has Ray running (a user's script, a
    # test after a study), like outside Ray: nothing assigned
    in_worker = ray.is_initialized() and ray.get_runtime_context().worker.mode == ray.WORKER_MODE
    placement = _placement() if in_worker else {}
    values.setdefault("threads", placement.get("threads", 1))
    if values.get("device", "auto") == "auto" and placement:
        values["device"] = placement["device"]
    # trials run inside their own folder: a relative data path means the driver's working directory
    return resolve_config(values, base=os.environ.get("TUNE_ORIG_WORKING_DIR"))


def _build_trainer(cfg: TrainConfig, placement: dict) -> Trainer:
    """Trainer(cfg), timed: the data load + model build share of the trial's overhead (throughput)."""
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    placement["setup_s"] = time.perf_counter() - t0
    return trainer


def _resources(trainer: Trainer) -> dict:
    """Peak memory and compile cost so far, for the study's throughput summary.  peak_rss_mib is the
    worker process's max RSS (with reused actors: over every trial the process ran so far)."""
    import resource

    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if trainer.device.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated(trainer.device) / 2**20
    stats = getattr(trainer.task, "compile_stats", None)
    if stats is not None:
        out.update(stats())
    return out


def _epoch_metrics(metrics: dict, placement: dict, trainer: Trainer) -> dict:
    """The trainer's metrics plus where the trial ran (node, GPU ids, device), when (wall clock) and
    what it cost (setup time, compile time, peak memory)."""
    out = dict(metrics)
    # the task family's fixed-weight validation objective (molecules: E + 30·F, physical units): comparable
    # across trials even when force_weight itself is being tuned
    out["val_loss"] = trainer.task.family.val_loss(metrics)
    out.update(node_id=placement.get("node_id", ""), hostname=socket.gethostname(), malloc=placement.get("malloc", ""),
               gpu_ids=placement.get("gpu_ids", ""), device=str(trainer.device),
               cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
               started_at=placement.get("started_at", 0.0), reported_at=time.time(),
               setup_s=placement.get("setup_s", float("nan")),
               actor_start_s=placement.get("actor_start_s", float("nan")), **_resources(trainer))
    return out


def dcnn_trainable(config: dict) -> None:
    """Function trainable: train with `dcnn.train`, report + checkpoint every epoch, resume if asked."""
    cfg = train_config_from_tune(config)
    placement = _placement()
    trainer = _build_trainer(cfg, placement)
    checkpoint = tune.get_checkpoint()
    reported: list[dict] = []  # every result so far: each checkpoint records them (trainables/trial_record.py)
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            trainer.load(Path(d) / CHECKPOINT_FILE)
            reported = list((read_record(d) or {}).get("results", []))
    trial_id = tune.get_context().get_trial_id() or ""
    while not trainer.done:
        reported.append(_epoch_metrics(trainer.step(), placement, trainer))
        with tempfile.TemporaryDirectory() as d:
            write_record(d, config, trial_id, reported)
            trainer.save(Path(d) / CHECKPOINT_FILE)
            tune.report(reported[-1], checkpoint=tune.Checkpoint.from_directory(d))


def _complete(fs, path: str) -> bool:
    """Whether `path` holds a whole trainer checkpoint: torch.save writes a zip archive, whose end record
    (the last bytes) is missing when the write or an upload was cut off (a full disk, a kill)."""
    import zipfile

    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File or not info.size:
        return False
    try:
        with fs.open_input_file(path) as fh:
            return zipfile.is_zipfile(fh)
    except OSError:
        return False


def _newest_checkpoint_instead_of(checkpoint):
    """The newest `checkpoint_*` folder with a complete trainer checkpoint beside a checkpoint that is gone
    or incomplete; None when the checkpoint is whole or nothing can stand in for it.  Gone: a deletion cut
    off by a kill can leave the folder (on an object store, a marker object) without its file; incomplete:
    a write or upload cut off by a full disk leaves a truncated file, which must never be resumed from."""
    if checkpoint is None:
        return None
    import pyarrow.fs as pafs

    fs, path = checkpoint.filesystem, checkpoint.path
    if _complete(fs, f"{path.rstrip('/')}/{CHECKPOINT_FILE}"):
        return None
    parent = path.rstrip("/").rsplit("/", 1)[0]
    try:
        entries = fs.get_file_info(pafs.FileSelector(parent))
    except OSError:
        return None
    candidates = sorted(e.path for e in entries if e.type == pafs.FileType.Directory
                        and e.base_name.startswith("checkpoint_") and e.path.rstrip("/") != path.rstrip("/")
                        and _complete(fs, f"{e.path}/{CHECKPOINT_FILE}"))
    return tune.Checkpoint(candidates[-1], filesystem=fs) if candidates else None


class DCNNTrainable(tune.Trainable):
    """Class trainable: one epoch per `step()`; supports reuse_actors (reset_config) and PBT."""

    def setup(self, config: dict) -> None:
        self._placement = _placement()
        self.trainer = _build_trainer(train_config_from_tune(config), self._placement)
        self._reported: list[dict] = []  # every result so far: each checkpoint records them (trial_record.py)

    def step(self) -> dict:
        if self.trainer.done:
            # restored from its final checkpoint (a driver killed after the trial finished, before Tune
            # recorded that): the trial is over; its final result is reported again, nothing is trained
            # (a checkpoint older than trial records: the final model's test metrics computed again)
            final = self._reported[-1] if self._reported else _epoch_metrics(
                {**self.trainer.history[-1], **self.trainer.test()}, self._placement, self.trainer)
            return {**final, "done": True}
        metrics = self.trainer.step()
        out = _epoch_metrics(metrics, self._placement, self.trainer)
        out["done"] = self.trainer.done
        self._reported.append(out)
        return out

    def restore(self, checkpoint_path):
        """Tune's restore, surviving a killed driver and a full disk: its last experiment snapshot can name a
        checkpoint that `num_to_keep` deleted after a newer one was written, or one whose file was cut off
        (a full disk).  Then the newest whole checkpoint beside it is restored instead (MLflow keeps one
        point per epoch: epochs trained again are not logged twice), rather than failing the trial on every
        retry or loading a truncated file."""
        newer = _newest_checkpoint_instead_of(getattr(checkpoint_path, "checkpoint", None))
        if newer is None:
            return super().restore(checkpoint_path)
        import logging

        logging.getLogger("dcnn").warning("checkpoint %s is gone or incomplete; restoring %s instead",
                                          checkpoint_path.checkpoint.path, newer.path)
        super().restore(type(checkpoint_path)(checkpoint=newer, metrics={}))
        self._iteration = self.trainer.epoch  # Tune counts one iteration per epoch

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        write_record(checkpoint_dir, self.config, self.trial_id, self._reported)  # first: a whole trainer.pt has it
        self.trainer.save(Path(checkpoint_dir) / CHECKPOINT_FILE)

    def load_checkpoint(self, checkpoint_dir: str) -> None:
        self.trainer.load(Path(checkpoint_dir) / CHECKPOINT_FILE)
        record = read_record(checkpoint_dir)  # None for a checkpoint made before records existed
        self._reported = [r for r in (record or {}).get("results", []) if r.get("epoch", 0) <= self.trainer.epoch]

    def reset_config(self, new_config: dict) -> bool:
        self._placement = _placement()
        self.trainer = _build_trainer(train_config_from_tune(new_config), self._placement)
        self._reported = []
        self.config = new_config
        return True
