"""A traced (and optionally compiled) energy + force function for derivative-constrained training.

Eager force training runs a double backward op by op.  Here E and F = −∂E/∂x are traced into ONE
aten graph (`make_fx` over a `torch.func.functional_call` function whose F comes from `torch.func.vjp`),
which `torch.compile` (inductor) then fuses; the optimizer step needs only the graph's first-order
backward.  NequIP ≥ 0.7 trains the same way.

Why each piece (each of these silently gives wrong gradients or refuses to trace otherwise):
- F from `torch.func.vjp`, not `torch.autograd.grad(create_graph=True)`: under `make_fx` the latter
  records the saved *outputs* of ops whose backward uses them (sigmoid, tanh, exp) as detached, so
  their second-order terms vanish (CGCNN's sigmoid gates: parameter gradients 5–8 % off).
- Integrated activations are `autograd.Function`s in `setup_context` style (torch.func requires it).
- BatchNorm in train mode updates its running statistics in place, which torch.func refuses.  While
  tracing, each BatchNorm normalizes with the batch statistics without touching its buffers
  (`track_running_stats=False`), and a pre-hook returns the batch mean and unbiased variance as extra
  (detached) graph outputs; `EnergyForces` applies the usual momentum update to the module's buffers
  after each call, so the running statistics equal eager's (tested).
- Batch size: graphs are traced with concrete shapes.  A smaller batch (the last one of an epoch) is
  padded with copies of its last frame up to the traced size and the padding cut off again, which is
  exact when no BatchNorm is in train mode (frames are independent); with BatchNorm in train mode the
  padding would change the batch statistics, so that size gets its own graph (one more compile per
  trial, not per step).  Evaluation (model.eval() or no grad) runs eagerly: it needs no double
  backward, so there is little to gain, and it saves a second compile.
- Any failure while tracing, compiling (inductor compiles the forward at the first call and the
  backward at the first backward, both done in a warm-up here) or checking falls back to eager for the
  rest of the run, logged once with the reason.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional

import torch
from torch import nn

from dcnn.models import energy_and_forces

__all__ = ["EnergyForces", "make_energy_forces", "COMPILE_MODES"]

log = logging.getLogger("dcnn")

COMPILE_MODES = ("off", "on", "auto")


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _batch_statistics(module: nn.Module, args: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, unbiased variance) a BatchNorm in train mode folds into its running statistics."""
    x = args[0]
    weight = args[1] if len(args) > 1 else None
    if weight is not None and hasattr(module, "batch_statistics"):  # CGCNN's masked BatchNorm
        mean, var, count = module.batch_statistics(x, weight)
    else:
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dims)
        var = x.var(dims, unbiased=False)
        count = torch.tensor(x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
    unbiased = var * (count / (count - 1).clamp(min=1.0))
    return mean.detach(), unbiased.detach()


class EnergyForces:
    """`(positions, numbers) -> (E, F)` for `model`, traced and (with backend="inductor") compiled.

    backend: "inductor" (torch.compile of the traced graph) or "trace" (the traced aten graph run as
    is: what the correctness tests check, since tracing is where the risk lies).  Used for training
    steps only (model.train() with grad enabled); anything else, and everything after a failure, runs
    `dcnn.models.energy_and_forces` eagerly.
    """

    def __init__(self, model: nn.Module, backend: str = "inductor", auto: Optional["AutoDecision"] = None):
        if backend not in ("inductor", "trace"):
            raise ValueError(f"backend={backend!r}; choose inductor or trace")
        self.model = model
        self.backend = backend
        self.auto = auto  # None: always compile; else decide after timing a few eager steps
        self.graphs: dict[tuple, Callable] = {}
        self.failed: Optional[str] = None
        self.compile_time_s = 0.0  # tracing + compiling + warm-up, summed over graphs
        self.compiles = 0

    # -- tracing --------------------------------------------------------------------------------
    def _trace(self, positions: torch.Tensor, numbers: torch.Tensor):
        from torch.fx.experimental.proxy_tensor import make_fx
        from torch.func import functional_call, vjp

        model = self.model
        bns = [m for m in _batchnorms(model) if m.training and m.track_running_stats]
        sink: list = []

        def hook(module, args):
            sink.append(_batch_statistics(module, args))

        def energy_forces(params, buffers, pos, z):
            def energy(p):
                sink.clear()
                e = functional_call(model, (params, buffers), (p, z))
                return e, tuple(sink)

            e, pullback, stats = vjp(energy, pos, has_aux=True)
            (grad,) = pullback(torch.ones_like(e))
            return e, -grad, stats

        handles = [m.register_forward_pre_hook(hook) for m in bns]
        for m in bns:
            m.track_running_stats = False  # normalize with batch statistics, leave buffers alone
        try:
            params = {k: v.detach() for k, v in model.named_parameters()}
            buffers = dict(model.named_buffers())
            graph = make_fx(energy_forces)(params, buffers, positions.detach(), numbers)
        finally:
            for m in bns:
                m.track_running_stats = True
            for h in handles:
                h.remove()
        if self.backend == "inductor":
            graph = torch.compile(graph, backend="inductor", dynamic=False, fullgraph=True)
        return graph, bns

    def _run(self, entry, positions, numbers):
        graph, bns = entry
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        e, f, stats = graph(params, buffers, positions, numbers)
        return e, f, stats, bns

    def _get(self, positions: torch.Tensor, numbers: torch.Tensor):
        # numbers enter the graph as an input (embeddings index with them), so only shapes key it: no host sync
        key = (tuple(positions.shape), positions.dtype, positions.device, tuple(numbers.shape))
        entry = self.graphs.get(key)
        if entry is None:
            t0 = time.perf_counter()
            entry = self._trace(positions, numbers)
            # warm-up: inductor compiles the forward now and the backward at the first backward
            e, f, _, _ = self._run(entry, positions, numbers)
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.autograd.grad(e.sum() + f.sum(), params, allow_unused=True)
            self.compile_time_s += time.perf_counter() - t0
            self.compiles += 1
            self.graphs[key] = entry
            log.info("traced%s the energy+force step for batch %s in %.1f s",
                     " and compiled" if self.backend == "inductor" else "", tuple(positions.shape),
                     time.perf_counter() - t0)
        return entry

    def _padded_batch(self, positions: torch.Tensor) -> Optional[int]:
        """A traced batch size to pad `positions` up to (None: trace this size)."""
        if any(m.training for m in _batchnorms(self.model)):
            return None
        b = positions.shape[0]
        sizes = [k[0][0] for k in self.graphs if k[0][1:] == tuple(positions.shape[1:])
                 and k[1] == positions.dtype and k[2] == positions.device and k[0][0] > b]
        return min(sizes) if sizes else None

    # -- the call -------------------------------------------------------------------------------
    def __call__(self, positions: torch.Tensor, numbers: torch.Tensor,
                 create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """As `dcnn.models.energy_and_forces`; traced only for training steps (create_graph, train mode)."""
        if self.failed is not None or not (create_graph and self.model.training and torch.is_grad_enabled()):
            return energy_and_forces(self.model, positions, numbers, create_graph=create_graph)
        if self.auto is not None and not self.auto.decide():
            return energy_and_forces(self.model, positions, numbers, create_graph=True)
        b = positions.shape[0]
        pad_to = self._padded_batch(positions)
        if pad_to is not None:
            positions = torch.cat([positions, positions[-1:].expand(pad_to - b, -1, -1)])
        try:
            entry = self._get(positions, numbers)
            e, f, stats, bns = self._run(entry, positions, numbers)
        except Exception as exc:  # noqa: BLE001 — any tracing/compiler failure: eager is always correct
            self.failed = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]
            log.warning("compiled energy+force step unavailable, training eagerly from now on (%s)", self.failed)
            if pad_to is not None:
                positions = positions[:b]
            return energy_and_forces(self.model, positions, numbers, create_graph=True)
        with torch.no_grad():  # the running statistics eager BatchNorm would have updated in place
            for m, (mean, var) in zip(bns, stats):
                m.num_batches_tracked += 1
                mom = m.momentum if m.momentum is not None else 1.0 / float(m.num_batches_tracked)
                m.running_mean.mul_(1 - mom).add_(mom * mean)
                m.running_var.mul_(1 - mom).add_(mom * var)
        if pad_to is not None:
            e, f = e[:b], f[:b]
        return e, f


# Measured with `make bench` (benchmarks/bench_compile.py) on the shared 2-core CPU VM, one thread, batch 20
# ethanol, under heavy contention (load 5-14 on 2 cores): (fraction of an eager training step the compiled
# step saves, seconds of tracing + compiling with inductor's on-disk cache cold).  Savings are the median of
# 3-4 runs at `small` that disagreed widely (compiled/eager speed-up: SchNet 1.01/1.40/1.50/2.16x, CGCNN with
# BatchNorm 0.99/1.06/2.93/3.14x, ForceNet 0.43/1.61/1.65x, DimeNet++ 2.03/2.23/2.40x); a warm cache cut the
# compile to 5-21 s.  Re-measure on a quiet machine and update this one table.  Unknown (model, preset):
# never compiled by `auto`.
AUTO_ESTIMATES = {
    ("schnet", "small"): (0.31, 48.0),
    ("cgcnn", "small"): (0.5, 127.0),
    ("forcenet", "small"): (0.38, 390.0),
    ("dimenetpp", "small"): (0.55, 740.0),
    # paper preset, two runs: SchNet compiled/eager 0.66x and 1.92x (cold compile 111 s, warm 8 s)
    ("schnet", "paper"): (0.1, 111.0),
    ("dimenetpp", "paper"): (0.6, 181.0),  # 980 → 384 ms/step
}


class AutoDecision:
    """`compile=auto`: time `probe` eager training steps (call-to-call, so backward and optimizer count),
    then compile iff  remaining steps × step time × saved fraction  >  compile time  (AUTO_ESTIMATES).

    The compile time used is the cold-cache one: later trials of a study usually hit inductor's on-disk
    cache and pay less (measured: 48 s → 7 s for SchNet small), so `auto` errs towards eager."""

    def __init__(self, model_name: str, total_steps: int, probe: int = 5, preset: str = "small"):
        self.saving, self.compile_s = AUTO_ESTIMATES.get((model_name, preset), (0.0, math.inf))
        self.total_steps, self.probe = total_steps, probe
        self.calls = 0
        self.stamps: list[float] = []
        self.decision: Optional[bool] = None
        self.reason = "undecided"

    def decide(self) -> bool:
        if self.decision is not None:
            return self.decision
        self.calls += 1
        self.stamps.append(time.perf_counter())
        if len(self.stamps) <= self.probe:
            return False
        step_s = (self.stamps[-1] - self.stamps[1]) / (len(self.stamps) - 2)  # skip the first (warm-up)
        remaining = max(self.total_steps - self.calls + 1, 0)
        gain = remaining * step_s * self.saving
        self.decision = gain > self.compile_s
        self.reason = (f"eager step {1e3 * step_s:.1f} ms × {remaining} steps left × saving {self.saving:.0%} "
                       f"= {gain:.1f} s {'>' if self.decision else '≤'} compile {self.compile_s:.0f} s")
        log.info("compile=auto: %s → %s", self.reason, "compile" if self.decision else "stay eager")
        return self.decision


def make_energy_forces(model: nn.Module, mode: str, model_name: str = "", total_steps: int = 0,
                       backend: str = "inductor", preset: str = "small"):
    """The (positions, numbers, create_graph) -> (E, F) function a task uses: compiled ("on"),
    decided from timed steps ("auto", see `AutoDecision`), or eager autograd ("off")."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if mode == "on":
        return EnergyForces(model, backend)
    if mode == "auto":
        return EnergyForces(model, backend, AutoDecision(model_name, total_steps, preset=preset))
    return lambda positions, numbers, create_graph: energy_and_forces(model, positions, numbers, create_graph)
