"""The training loop: generic over a Task, seeded, resumable bit-for-bit, divergence-safe.

`Trainer` is stepwise (one epoch per call) so a Ray class trainable can drive it; `train()` runs it to
the end and is what the CLI and the function trainable use.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from dcnn.config import TrainConfig
from dcnn.numerics import configure_cpu
from dcnn.registry import make_task, resolve_config
from dcnn.schedules import LRSchedule
from dcnn.tasks import Task
from dcnn.weights import BestWeights, EMAWeights

__all__ = ["TrainConfig", "Trainer", "train", "resolve_device"]

log = logging.getLogger("dcnn")
_warned_cpu_fallback = False


def resolve_device(requested: str) -> torch.device:
    """CUDA when asked for (or 'auto') and usable; otherwise CPU, saying so once if CUDA was asked for."""
    global _warned_cpu_fallback
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda" if requested == "auto" else requested)
    if requested != "auto" and not _warned_cpu_fallback:
        log.warning("device=%s requested but torch cannot use CUDA here "
                    "(CUDA_VISIBLE_DEVICES=%r); falling back to CPU", requested,
                    os.environ.get("CUDA_VISIBLE_DEVICES"))
        _warned_cpu_fallback = True
    return torch.device("cpu")


class Trainer:
    """Adam on a Task's loss, one epoch per `run_epoch()`; `save`/`load` checkpoint everything."""

    def __init__(self, config: TrainConfig, task: Optional[Task] = None):
        """`config` as `dcnn.registry.resolve_config` made it, where the run started (the CLI, a trainable):
        resolved once per trial.  A config nobody resolved (a script's TrainConfig(...)) is resolved here."""
        if not config.resolved:
            config = resolve_config(config)
        self.config = config
        self._configure_cpu()  # before any compute: data, model build, initialisation
        self.device = resolve_device(config.device)
        torch.manual_seed(config.seed)  # parameter initialisation
        self.task = task if task is not None else make_task(config, self.device)
        self.model = self.task.model
        self.optimizer_kind = self._optimizer_kind(0)
        self.optimizer = self._make_optimizer(self.optimizer_kind)
        # the schedule spans the first optimizer's epochs (an L-BFGS phase after Adam keeps lr 1)
        self.schedule = LRSchedule(config.lr_schedule, config.lr, config.epochs - config.lbfgs_epochs,
                                   self.task.steps_per_epoch(config.batch_size), lr_min=config.lr_min,
                                   warmup_epochs=config.warmup_epochs, plateau_factor=config.plateau_factor,
                                   plateau_patience=config.plateau_patience)
        self.shuffle = torch.Generator().manual_seed(config.seed)  # CPU generator: same on any device
        self.epoch = 0
        self.diverged = False
        self.diverged_epoch: Optional[int] = None
        self.history: list[dict] = []
        self._lbfgs_prev_loss: Optional[float] = None  # L-BFGS's last iterate loss: a frozen iterate is restarted
        # the field's evaluation weights: a moving average of the weights (MACE, NequIP) and the best
        # validation epoch's (dcnn/weights.py); both off in the paper's recipe
        self.ema = EMAWeights(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.best = BestWeights(self.model) if config.evaluate == "best" or config.early_stopping else None

    def _optimizer_kind(self, epoch: int) -> str:
        """The optimizer of an epoch (0-based): `optimizer`, or L-BFGS for the last `lbfgs_epochs` after Adam."""
        cfg = self.config
        return "lbfgs" if cfg.optimizer == "lbfgs" or epoch >= cfg.epochs - cfg.lbfgs_epochs else "adam"

    def _make_optimizer(self, kind: str) -> torch.optim.Optimizer:
        if kind == "lbfgs":  # PINNs (Raissi's Burgers, DeepXDE's second stage): full-batch L-BFGS, one iteration
            # per step; max_eval bounds its line search (torch's default, 5/4·max_iter, would be 1: none). Alone it
            # takes the config's lr (1 in the studies); after Adam, 1 (its lr is Adam's)
            lr = self.config.lr if self.config.optimizer == "lbfgs" else 1.0
            return torch.optim.LBFGS(self.model.parameters(), lr=lr, max_iter=1, max_eval=6, history_size=50,
                                     line_search_fn="strong_wolfe", tolerance_grad=0.0, tolerance_change=0.0)
        if self.config.weight_decay:  # decoupled (AdamW), the form fairchem's and NequIP's configs use
            return torch.optim.AdamW(self.model.parameters(), lr=self.config.lr,
                                     weight_decay=self.config.weight_decay, fused=True)
        return torch.optim.Adam(self.model.parameters(), lr=self.config.lr, fused=True)  # one kernel, not a loop over parameters

    def _configure_cpu(self) -> None:
        """Threads and denormal flushing (dcnn/numerics.py) on the calling thread.  Called again by every
        epoch and test: the flags are per thread, and a caller (a Ray actor, a user's thread pool) may
        build the trainer on one thread and step it on another."""
        self.denormals_flushed = configure_cpu(self.config.threads, self.config.flush_denormals)

    @property
    def done(self) -> bool:
        return self.diverged or self.stalled or self.stopped_early or self.epoch >= self.config.epochs

    @property
    def stopped_early(self) -> bool:
        """`early_stopping` epochs in a row without a better validation objective."""
        patience = self.config.early_stopping
        return bool(patience) and self.best is not None and self.best.epoch >= 0 and \
            self.epoch - self.best.epoch >= patience

    @property
    def stalled(self) -> bool:
        """The task family's stall rule on the epochs so far: the optimizer never moved (it will not start)."""
        return self.task.family.stalled(self.history)

    def _backward(self, loss: torch.Tensor) -> None:
        """Gradients of the loss for the optimizer's parameters only.  A plain `loss.backward()` also
        differentiates down to every other leaf that requires grad: the positions (atomistic tasks) and the
        collocation points (PINNs) require grad so that the forces and the PDE residual can be taken, so their
        gradient would be made too, through the basis functions' second derivatives, and then thrown away
        (measured eager on mlearn Mo, batch 20: 17 % of a DimeNet++ step, 7 % of a SchNet step; docs/speed.md).
        The compiled step (dcnn/compiled.py) never made it: its positions are a plain input."""
        loss.backward(inputs=[p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad])

    def run_epoch(self) -> dict:
        """Train one epoch; return the epoch's metrics (validation and running train MAE)."""
        t0 = time.perf_counter()
        self._configure_cpu()
        self.model.train()
        cfg = self.config
        kind = self._optimizer_kind(self.epoch)
        if kind != self.optimizer_kind:  # Adam's epochs are over: L-BFGS from here (its own, fresh state)
            self.optimizer_kind, self.optimizer = kind, self._make_optimizer(kind)
        switched = cfg.optimizer != kind  # the second phase keeps its own lr
        sums: dict[str, torch.Tensor] = {}
        steps = restarts = 0
        for step, index in enumerate(self.task.batches(self.shuffle, cfg.batch_size)):
            lr = self.optimizer.param_groups[0]["lr"] if switched else self.schedule.lr_at(self.epoch, step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if kind == "lbfgs":  # one iteration; the line search evaluates the loss again
                last = {}

                def closure():
                    self.optimizer.zero_grad(set_to_none=True)
                    loss, terms = self.task.loss(index)
                    self._backward(loss)
                    last.setdefault("at_start", (loss, terms))  # the iterate's own loss, not a trial point's
                    return loss

                self.optimizer.step(closure)
                loss, terms = last["at_start"]
                if float(loss) == self._lbfgs_prev_loss:
                    # the iterate did not move: torch's L-BFGS would propose the same direction again (its history
                    # gains no pair from a step not taken) and stay frozen; restart it from steepest descent (its
                    # history cleared). Where the line search fails on that too (IReLU nets on Burgers after Adam:
                    # kinks of IReLU'' in u_xx) the iterate stays put, and the stall rule ends the trial
                    self.optimizer.state.clear()
                    restarts += 1
                self._lbfgs_prev_loss = float(loss)
            else:
                loss, terms = self.task.loss(index)
                self.optimizer.zero_grad(set_to_none=True)
                self._backward(loss)
                self.optimizer.step()
                if self.ema is not None:
                    self.ema.update()
            for k, v in terms.items():  # stays on device: one host sync per epoch, not per step
                sums[k] = sums.get(k, 0) + v
            sums["train_loss"] = sums.get("train_loss", 0) + loss.detach()  # objective, in rescaled units
            steps += 1
        self.epoch += 1
        metrics = {k: float(v) / steps for k, v in sums.items()}
        with self._evaluation_weights():  # the moving average, where there is one
            metrics.update(self.task.evaluate("val"))
        if self.task.family.nonfinite(metrics):
            self.diverged, self.diverged_epoch = True, self.epoch
        objective = self.task.objective(metrics)
        self.schedule.end_epoch(objective)  # plateau: the task's validation objective
        if self.best is not None and not self.diverged:
            with self._evaluation_weights():
                if self.best.offer(objective, self.epoch):
                    metrics["best_epoch"] = self.epoch
        metrics.update(epoch=self.epoch, diverged=int(self.diverged), lr=lr, epoch_time_s=time.perf_counter() - t0,
                       optimizer=kind, lbfgs_restarts=restarts,
                       denormals_flushed=int(self.denormals_flushed))
        self.history.append(metrics)
        metrics["stalled"] = int(self.stalled)  # the family's rule, as it stands
        return metrics

    BUILD_KEYS = ("activations_replaced", "batchnorm_removed", "n_parameters", "init_layers_scaled")

    def step(self) -> dict:
        """One epoch; after the last one (or a divergence) the test metrics are added, and what was built
        (`BUILD_KEYS`: activations swapped, BatchNorm layers removed, parameters, layers LSUV scaled), so a
        trial's record says what the arm did to the model."""
        metrics = dict(self.run_epoch())  # a copy: history keeps the epoch's own metrics
        if self.done:
            metrics.update(self.test())
            metrics.update({k: self.task.info[k] for k in self.BUILD_KEYS if k in self.task.info})
        return metrics

    def test(self) -> dict:
        """`test_<metric>` of the current (last-epoch) model (NaN after a non-finite loss), the task's
        reference constants (baselines, blow-up scales) and `diverged` by the family's one rule
        (dcnn.families.TaskFamily.diverged: non-finite, or above BLOWUP_FACTOR × the zero-output error)."""
        self._configure_cpu()
        out = self.task.test_references()
        family = self.task.family
        if self.diverged:
            out.update({spec.test_key: math.nan for spec in family.metrics})
        else:
            with self._test_weights():
                out.update({f"test_{k}": v for k, v in self.task.evaluate("test").items()})
            if self.best is not None:
                out["best_epoch"] = self.best.epoch
            out["stopped_early"] = int(self.stopped_early)
        out.update(diverged=int(family.diverged(out, nonfinite_in_training=self.diverged)),
                   blew_up=int(family.blown_up(out)), stalled=int(self.stalled))
        return out

    def _evaluation_weights(self):
        """The weights validation sees: the moving average's, else the live ones."""
        return self.ema.swapped() if self.ema is not None else contextlib.nullcontext()

    def _test_weights(self):
        """The weights the test metrics are of: the best validation epoch's (`evaluate=best`), else the
        evaluation weights of the last epoch."""
        if self.config.evaluate == "best" and self.best is not None and self.best.epoch >= 0:
            return self.best.swapped()
        return self._evaluation_weights()

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "optimizer_kind": self.optimizer_kind,  # which optimizer's state this is (Adam, then L-BFGS)
                 "lbfgs_prev_loss": self._lbfgs_prev_loss,
                 "epoch": self.epoch, "diverged": self.diverged,
                 "diverged_epoch": -1 if self.diverged_epoch is None else self.diverged_epoch,
                 "shuffle_rng": self.shuffle.get_state(), "torch_rng": torch.get_rng_state(),
                 "history": self.history, "config": self.config.to_dict(),
                 "schedule": self.schedule.state_dict(),
                 # what the initialisation did (the weights themselves are in "model"): for the record
                 "init": _plain(getattr(self.task, "init_info", {})),
                 # what a calculator needs to rebuild the model and turn its outputs into physical units
                 # (dcnn.calculator.DCNNCalculator): the task's own description of itself
                 "inference": _plain(getattr(self.task, "inference_info", dict)())}
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.best is not None:
            state["best"] = self.best.state_dict()
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        kind = state.get("optimizer_kind", self.config.optimizer)  # the optimizer that saved it
        if kind != self.optimizer_kind:
            self.optimizer_kind, self.optimizer = kind, self._make_optimizer(kind)
        self.optimizer.load_state_dict(state["optimizer"])
        self._lbfgs_prev_loss = state.get("lbfgs_prev_loss")
        # the config's lr wins (PBT changes it between loads): the schedule sets every step's lr from it
        if "schedule" in state:
            self.schedule.load_state_dict(state["schedule"])
        self.epoch = int(state["epoch"])
        self.diverged = bool(state["diverged"])
        self.diverged_epoch = None if state["diverged_epoch"] < 0 else int(state["diverged_epoch"])
        self.shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.history = list(state["history"])
        if self.ema is not None and "ema" in state:
            self.ema.load_state_dict(state["ema"])
        if self.best is not None and "best" in state:
            self.best.load_state_dict(state["best"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint atomically: serialised in memory, written to a temporary file, flushed to disk,
        then renamed over `path`, so `path` is always a whole checkpoint (the previous one or this one).  A
        failed write (a full disk) removes the temporary file and raises OSError with its cause: torch.save
        writing to the file itself would report a full disk as "enforce fail at inline_container.cc"."""
        import errno
        import io

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        buffer = io.BytesIO()
        torch.save(self.state_dict(), buffer)
        try:
            with open(tmp, "wb") as fh:
                fh.write(buffer.getbuffer())
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            tmp.unlink(missing_ok=True)  # nothing half-written stays behind (and its space is freed)
            cause = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
            raise OSError(e.errno, f"cannot write the checkpoint {path} ({buffer.tell()} bytes): {cause}") from e
        os.replace(tmp, path)
        return path

    def load(self, path: str | os.PathLike) -> None:
        # on CPU: the RNG states must stay CPU byte tensors (map_location=cuda would move them and
        # set_rng_state refuses them); load_state_dict copies the weights onto the model's device
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    def summary(self) -> dict:
        """Final result: last epoch's metrics, test metrics, divergence and what was built."""
        out = dict(self.history[-1]) if self.history else {}
        out.update(self.test())  # `diverged` by the family's rule
        out.update(diverged_epoch=self.diverged_epoch,
                   epochs_completed=self.epoch, device=str(self.device),
                   denormals_flushed=int(self.denormals_flushed), **self.task.info)
        out.update(getattr(self.task, "compile_stats", dict)())  # compile time / fallback, if the task compiles
        return out


def _plain(value):
    """A JSON-like copy (dicts, lists, str, float, int) that `torch.load(weights_only=True)` accepts."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def train(config: TrainConfig, on_epoch: Optional[Callable[[dict, Trainer], None]] = None,
          resume_from: str | os.PathLike | None = None) -> dict:
    """Train to `config.epochs` (or divergence) and return the summary.

    `on_epoch(metrics, trainer)` is called after every epoch (trainer.save() makes a checkpoint);
    `resume_from` continues from a checkpoint written by `Trainer.save`.
    """
    trainer = Trainer(config)
    if resume_from is not None:
        trainer.load(resume_from)
    while not trainer.done:
        metrics = trainer.step()
        if on_epoch is not None:
            on_epoch(metrics, trainer)
    return trainer.summary()
