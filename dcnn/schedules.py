"""Learning-rate schedules: `constant` (the paper's), `cosine` (per step, to `lr_min`, optional linear
warm-up) and `plateau` (multiply by `plateau_factor` when val_loss stalls for `plateau_patience` epochs).

Why our own small class instead of torch.optim.lr_scheduler: cosine is a pure function of the step, so
resuming from an epoch checkpoint needs no scheduler state and a Tune/PBT lr change simply rescales it;
plateau's state is three numbers saved in the trainer checkpoint.
"""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine", "plateau")


class LRSchedule:
    def __init__(self, kind: str, lr: float, epochs: int, steps_per_epoch: int, lr_min: float = 0.0,
                 warmup_epochs: int = 0, plateau_factor: float = 0.5, plateau_patience: int = 2,
                 plateau_threshold: float = 1e-3):
        if kind not in SCHEDULES:
            raise ValueError(f"lr_schedule={kind!r} is not allowed; choose one of: {', '.join(SCHEDULES)}")
        self.kind, self.lr, self.lr_min = kind, lr, lr_min
        self.epochs, self.steps_per_epoch, self.warmup_epochs = epochs, max(1, steps_per_epoch), warmup_epochs
        self.plateau_factor, self.plateau_patience = plateau_factor, plateau_patience
        self.plateau_threshold = plateau_threshold
        # plateau state (the only state any schedule has)
        self.scale, self.best, self.bad_epochs = 1.0, math.inf, 0

    def lr_at(self, epoch: int, step: int) -> float:
        """lr for `step` (0-based, within the epoch) of `epoch` (0-based)."""
        warmup_steps = self.warmup_epochs * self.steps_per_epoch
        t = epoch * self.steps_per_epoch + step
        if t < warmup_steps:
            return self.lr * (t + 1) / warmup_steps
        if self.kind == "constant":
            return self.lr
        if self.kind == "plateau":
            return max(self.lr * self.scale, self.lr_min)
        total = self.epochs * self.steps_per_epoch - warmup_steps
        progress = (t - warmup_steps) / max(1, total - 1)
        return self.lr_min + 0.5 * (self.lr - self.lr_min) * (1.0 + math.cos(math.pi * min(1.0, progress)))

    def end_epoch(self, val_loss: float) -> None:
        """Plateau: reduce the lr after `plateau_patience` epochs without a relative improvement."""
        if self.kind != "plateau" or not math.isfinite(val_loss):
            return
        if val_loss < self.best * (1.0 - self.plateau_threshold):
            self.best, self.bad_epochs = val_loss, 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.plateau_patience:
            self.scale *= self.plateau_factor
            self.bad_epochs = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.best, self.bad_epochs = float(state["scale"]), float(state["best"]), int(state["bad_epochs"])
