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
- Batch sizes: one molecule's complete graphs (every batch alike) are traced with concrete shapes; a
  smaller last batch of an epoch gets its own graph.  Variable-size data (periodic cells, radius graphs:
  every batch its own atom and edge counts) is traced with symbolic sizes (`make_fx(tracing_mode=
  "symbolic")`, structures, atoms, edges and index tables all symbolic) and compiled with
  `torch.compile(dynamic=True)`: one graph and one compile for every batch, NequIP's way of training
  compiled on such data.  What would pin a symbolic size to the traced batch is kept out: `int()` of a
  shape in the models (`AtomicGraph.n_edges` stays a size), aten's fused BatchNorm, whose backward AOT
  autograd traces with the batch dimension concrete (`dcnn/batchnorm.py` writes it in plain ops while
  tracing), and "duck" sizing (`_no_duck_shapes`).  Sizes 0 and 1 are always specialised: a batch of one
  structure makes dynamo compile once more.  Evaluation (model.eval() or no grad) runs eagerly: it needs no double backward, so
  there is little to gain, and it saves a second compile.
- Inductor is handed one post-grad pass (`dcnn/leading_sums.py`): sums over the rows of wide edge tensors
  (BatchNorm statistics, bias gradients) run as ATen's kernel, which reads rows in order, where inductor's
  loop strides through columns.
- Any failure while tracing, compiling (inductor compiles the forward at the first call and the
  backward at the first backward, both done in a warm-up here) or checking falls back to eager for the
  rest of the run, logged once with the reason.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from dcnn.atomistic.graph import AtomicGraph
from dcnn.batchnorm import batch_statistics_as_outputs, fold_running_statistics
from dcnn.config import COMPILE_MODES  # the values of TrainConfig.compile (re-exported: orchestrator/cli.py)
from dcnn.leading_sums import LeadingSumsToATen
from dcnn.models import energy_and_forces

__all__ = ["EnergyForces", "make_energy_forces", "COMPILE_MODES", "compile_cache_dir", "GraphRecords"]

log = logging.getLogger("dcnn")


def compile_cache_dir() -> Path:
    """The on-disk compile cache every trial of this user on this machine shares: inductor's own
    (`TORCHINDUCTOR_CACHE_DIR`) when the user set it, else `$XDG_CACHE_HOME/dcnn-ablate/inductor` (default
    ~/.cache/...), which, unlike torch's default under /tmp, survives a reboot.  Set in the environment here,
    so inductor, Ray's workers started later by this process and our graph records all use it."""
    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not chosen:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        chosen = os.path.join(base, "dcnn-ablate", "inductor")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = chosen
    return Path(chosen)


def _plain_attributes(model: nn.Module) -> str:
    """The numbers and strings each module holds outside its parameters (a cutoff, an envelope's exponent):
    they shape the traced graph, and `repr` does not print them (DimeNet++ at 5 and 6 Å print alike)."""
    def plain(m: nn.Module) -> list:
        return sorted((k, v) for k, v in vars(m).items()
                      if isinstance(v, (bool, int, float, str)) and not k.startswith("_") and k != "training")

    return repr([(name, plain(m)) for name, m in model.named_modules()])


class GraphRecords:
    """What compiling each distinct energy+force graph cost and saved on this machine, beside inductor's
    cache (`compile_cache_dir()/dcnn-graphs/<key>.json`, one file per graph, written atomically, so the
    workers of a study share it without locks).  `auto` reads it: a graph compiled before compiles from the
    warm cache (seconds, not minutes), and its measured saving replaces the table's estimate.

    The key is everything that fixes the traced graph: the module tree (`repr`: layer types and sizes,
    activation names, BatchNorm or Identity), train mode, the batch's shape (only which tables it carries
    when the sizes are symbolic), dtype and device, the torch version and the backend."""

    def __init__(self, folder: Path | None = None):
        self.folder = (folder or compile_cache_dir()) / "dcnn-graphs"

    @staticmethod
    def key(model: nn.Module, graph, backend: str, dynamic: bool = False) -> str:
        text = "\n".join([repr(model), _plain_attributes(model), str(model.training),
                          str(_shape_key(graph, dynamic)), torch.__version__, backend])
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def get(self, key: str) -> dict:
        try:
            return json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            return {}

    def update(self, key: str, **values) -> dict:
        """Merge measurements into the graph's record: `compile_s` appends to `compiles` (the first is the
        cold one, later ones hit the warm cache), anything else replaces."""
        record = self.get(key)
        compile_s = values.pop("compile_s", None)
        if compile_s is not None:
            record.setdefault("compiles", []).append(round(float(compile_s), 3))
        record.update(values)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(record, indent=1))
            os.replace(tmp, self.folder / f"{key}.json")
        except OSError as e:  # a read-only or full home: compiling still works, `auto` just knows less
            log.warning("cannot record compile measurements in %s (%s)", self.folder, e)
        return record


class EnergyForces:
    """`(positions, numbers) -> (E, F)` for `model`, traced and (with backend="inductor") compiled.

    backend: "inductor" (torch.compile of the traced graph) or "trace" (the traced aten graph run as
    is: what the correctness tests check, since tracing is where the risk lies).  Used for training
    steps only (model.train() with grad enabled); anything else, and everything after a failure, runs
    `dcnn.models.energy_and_forces` eagerly.
    """

    def __init__(self, model: nn.Module, backend: str = "inductor", auto: Optional["AutoDecision"] = None,
                 records: Optional[GraphRecords] = None, dynamic: bool = False):
        if backend not in ("inductor", "trace"):
            raise ValueError(f"backend={backend!r}; choose inductor or trace")
        self.model = model
        self.backend = backend
        self.dynamic = dynamic  # symbolic sizes: one graph for batches of any size (variable-size data)
        self.auto = auto  # None: always compile; else decide after timing a few eager steps
        self.records = records if records is not None else (GraphRecords() if backend == "inductor" else None)
        self.graphs: dict[tuple, Callable] = {}
        self.failed: Optional[str] = None
        self.compile_time_s = 0.0  # tracing + compiling + warm-up, summed over graphs
        self.compiles = 0
        self.warm_cache: Optional[bool] = None  # whether the first graph had been compiled here before

    # -- tracing --------------------------------------------------------------------------------
    def _trace(self, graph):
        from torch.fx.experimental.proxy_tensor import make_fx
        from torch.func import functional_call, vjp

        model = self.model
        periodic = graph.periodic  # a Python value: which ops the model runs (cell shifts or none)
        n_structures = None if self.dynamic else graph.n_structures  # dynamic: the cells' (symbolic) count

        def energy_forces(params, buffers, pos, tensors, extras):
            def energy(p):
                sink.clear()
                named = dict(zip(GRAPH_TENSORS, tensors))
                g = AtomicGraph(p, n_structures=named["cells"].shape[0] if n_structures is None else n_structures,
                                extras=extras, periodic=periodic, **named)
                e = functional_call(model, (params, buffers), (g,))
                return e, tuple(sink)

            e, pullback, stats = vjp(energy, pos, has_aux=True)
            (grad,) = pullback(torch.ones_like(e))
            return e, -grad, stats

        with batch_statistics_as_outputs(model) as (bns, sink):
            params = {k: v.detach() for k, v in model.named_parameters()}
            buffers = dict(model.named_buffers())
            # constants a model keeps outside its buffers (DimeNet++'s float64 Bessel zeros) are real tensors
            # in a symbolic trace: allowed, they are the same for every batch
            with _no_duck_shapes() if self.dynamic else contextlib.nullcontext():
                traced = make_fx(energy_forces, tracing_mode="symbolic" if self.dynamic else "real",
                                 _allow_non_fake_inputs=self.dynamic)(
                    params, buffers, graph.positions.detach(), _tensors(graph), graph.extras)
        if self.backend == "inductor":
            traced = torch.compile(traced, backend="inductor", dynamic=self.dynamic, fullgraph=True,
                                   options={"post_grad_custom_post_pass": LeadingSumsToATen()})
        return traced, bns

    def _run(self, entry, graph):
        traced, bns = entry
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        with _no_duck_shapes() if self.dynamic else contextlib.nullcontext():  # dynamo compiles at a first call
            e, f, stats = traced(params, buffers, graph.positions, _tensors(graph), graph.extras)
        return e, f, stats, bns

    def _get(self, graph):
        # only shapes key a graph (the atomic numbers and edges are inputs): no host sync
        key = _shape_key(graph, self.dynamic)
        entry = self.graphs.get(key)
        if entry is None:
            record_key = None
            if self.records is not None:
                compile_cache_dir()  # inductor writes its cache where our records are
                record_key = GraphRecords.key(self.model, graph, self.backend, self.dynamic)
                warm = bool(self.records.get(record_key).get("compiles"))
                self.warm_cache = warm if self.warm_cache is None else self.warm_cache
            t0 = time.perf_counter()
            entry = self._trace(graph)
            # warm-up: inductor compiles the forward now and the backward at the first backward
            e, f, _, _ = self._run(entry, graph)
            params = [p for p in self.model.parameters() if p.requires_grad]
            torch.autograd.grad(e.sum() + f.sum(), params, allow_unused=True)
            spent = time.perf_counter() - t0
            self.compile_time_s += spent
            self.compiles += 1
            self.graphs[key] = entry
            if record_key is not None:
                self.records.update(record_key, compile_s=spent)
            log.info("traced%s the energy+force step for %s (first: %d structures, %d atoms, %d edges) in %.1f s",
                     " and compiled" if self.backend == "inductor" else "",
                     "batches of any size" if self.dynamic else "batches of this shape", graph.n_structures,
                     graph.positions.shape[0], graph.n_edges, spent)
        return entry

    def _record_of(self, graph) -> tuple[Optional[str], dict]:
        """(key, record) of the graph this batch would trace (for `auto`), or (None, {}) without records."""
        if self.records is None or self.auto is None or self.auto.decision is not None:
            return None, {}
        key = GraphRecords.key(self.model, graph, self.backend, self.dynamic)
        return key, self.records.get(key)

    # -- the call -------------------------------------------------------------------------------
    def __call__(self, graph, create_graph: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """As `dcnn.models.energy_and_forces`; traced only for training steps (create_graph, train mode).
        The graph must already be `prepare`d (index tables in `extras`): the trace takes them as inputs."""
        if self.failed is not None or not (create_graph and self.model.training and torch.is_grad_enabled()):
            return energy_and_forces(self.model, graph, create_graph=create_graph)
        if self.auto is not None and not self.auto.decide(self._record_of(graph)):
            return energy_and_forces(self.model, graph, create_graph=True)
        if len(self.graphs) >= MAX_GRAPHS and _shape_key(graph, self.dynamic) not in self.graphs:
            self._fall_back(f"more than {MAX_GRAPHS} batch shapes (variable-size data: every batch its own "
                            f"graph)")
            return energy_and_forces(self.model, graph, create_graph=True)
        try:
            entry = self._get(graph)
            if self.auto is not None and self.auto.paired(self.records):  # timing eager beside compiled
                return energy_and_forces(self.model, graph, create_graph=True)
            e, f, stats, bns = self._run(entry, graph)
        except Exception as exc:  # noqa: BLE001 — any tracing/compiler failure: eager is always correct
            self._fall_back(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return energy_and_forces(self.model, graph, create_graph=True)
        for m, (mean, var) in zip(bns, stats):  # the running statistics eager BatchNorm would have updated
            fold_running_statistics(m, mean, var, m.running_mean, m.running_var, m.num_batches_tracked)
        return e, f

    def _fall_back(self, reason: str) -> None:
        self.failed = reason[:500]
        log.warning("compiled energy+force step unavailable, training eagerly from now on (%s)", self.failed)


# static: a full batch and the epoch's last, smaller one; more means batches of different shapes.  Dynamic:
# one graph per set of index tables (DimeNet++/GemNet-T build one only for batches of few triplets per edge)
MAX_GRAPHS = 2


GRAPH_TENSORS = ("numbers", "batch", "edge_index", "cell_shifts", "cells", "n_atoms", "pbc")


def _tensors(graph) -> tuple:
    """The graph's tensors besides positions (GRAPH_TENSORS), what the traced step takes as inputs."""
    return tuple(getattr(graph, name) for name in GRAPH_TENSORS)


def _no_duck_shapes():
    """Symbolic sizes without "duck" sizing (one symbol for all dims of equal size): else a batch of 2
    structures shares its size symbol with the edge index's leading 2, a constant, and the structure count
    is baked into the graph."""
    from torch.fx.experimental import _config

    return _config.patch(use_duck_shape=False)


def _shape_key(graph, dynamic: bool = False) -> tuple:
    """What fixes a traced graph: the positions' dtype and device, periodic or not, which index tables the
    graph carries and, traced with concrete sizes, every tensor's shape."""
    key = (graph.positions.dtype, graph.positions.device, graph.periodic, tuple(sorted(graph.extras)))
    if dynamic:
        return key
    tensors = (graph.positions, *(t for t in _tensors(graph) if t is not None),
               *(graph.extras[k] for k in sorted(graph.extras)))
    return (*key, graph.n_structures, tuple(tuple(t.shape) for t in tensors))


# Measured with `make bench` (benchmarks/bench_compile.py) on the shared 2-core CPU VM, one thread, batch 20
# ethanol, under heavy contention (load 5-14 on 2 cores): (fraction of an eager training step the compiled
# step saves, seconds of tracing + compiling with inductor's on-disk cache cold, and warm).  Savings are the
# median of 3-4 runs at `small` that disagreed widely (compiled/eager speed-up: SchNet 1.01/1.40/1.50/2.16x,
# CGCNN with BatchNorm 0.99/1.06/2.93/3.14x, ForceNet 0.43/1.61/1.65x, DimeNet++ 2.03/2.23/2.40x); a warm
# cache cut the compile to 5-21 s.  They are only the prior: once a graph has been compiled on a machine,
# `auto` uses what was measured there (GraphRecords).  Unknown (model, preset, sizes): never compiled by
# `auto` unless a record exists.  Keys: (model, preset, symbolic sizes).
AUTO_ESTIMATES = {
    ("schnet", "small", False): (0.31, 48.0, 9.0),
    ("cgcnn", "small", False): (0.5, 127.0, 15.0),
    ("forcenet", "small", False): (0.38, 390.0, 21.0),
    ("dimenetpp", "small", False): (0.55, 740.0, 19.0),
    # paper preset, two runs: SchNet compiled/eager 0.66x and 1.92x (cold compile 111 s, warm 8 s)
    ("schnet", "paper", False): (0.1, 111.0, 8.0),
    ("dimenetpp", "paper", False): (0.6, 181.0, 19.0),  # 980 → 384 ms/step
    # variable-size periodic batches (symbolic sizes, one graph for all): `python -m benchmarks.bench_compile
    # --data catalysis --presets small` (20 slabs of 13-29 atoms, 6 Å), one thread. Saving = 1 - 1/(paired
    # eager/compiled ratio, the eager step differentiating the parameters only), 2026-12-07, 2 cores AMD EPYC
    # (family 25 model 1): 2.03x, 2.03x, 1.57x, 1.47x (DimeNet++), 1.71x (GemNet-T) (docs/speed.md). Compile s
    # cold (first run on the 2026-12-06 machine, mlearn-Mo for the two angular models; 2-4x longer on the
    # slower machine of 2026-12-07) and warm (inductor's cache holding it)
    ("schnet", "small", True): (0.51, 24.0, 13.0),
    ("cgcnn", "small", True): (0.51, 36.0, 23.0),
    ("forcenet", "small", True): (0.36, 42.0, 22.0),
    ("dimenetpp", "small", True): (0.32, 85.0, 12.0),
    ("gemnet_t", "small", True): (0.42, 72.0, 14.0),
}


class AutoDecision:
    """`compile=auto`: time `probe` eager training steps (call-to-call, so backward and optimizer count),
    then compile iff  remaining steps × step time × saved fraction  >  expected compile time.

    Saving and compile time come from this machine's record of the graph when there is one (GraphRecords:
    a graph compiled before hits inductor's warm cache, and its saving was measured here), else from
    AUTO_ESTIMATES with the cold compile time: a study's first trial of a kind errs towards eager.  After
    compiling, the next 2·`probe` steps alternate compiled and eager (`paired`), timed the same way, so the
    saving is measured under one and the same load (a study's other trials, a test suite beside it): a
    load that changed between the eager probe and the compiled steps once recorded a saving of 0 (compiled
    0.98 s against eager 0.60 s, a step that is 1.6× faster compiled on an idle core) and kept every later
    trial of that graph eager.  Each measurement is kept; the record's saving is their median."""

    def __init__(self, model_name: str, total_steps: int, probe: int = 5, preset: str = "small",
                 dynamic: bool = False):
        self.saving, self.compile_s, self.warm_s = AUTO_ESTIMATES.get((model_name, preset, dynamic),
                                                                      (0.0, math.inf, math.inf))
        self.total_steps, self.probe = total_steps, probe
        self.calls = 0
        self.stamps: list[float] = []
        self.paired_stamps: list[float] = []
        self.paired_s: dict[str, list[float]] = {"eager": [], "compiled": []}
        self.step_s = math.nan
        self.key: Optional[str] = None
        self.decision: Optional[bool] = None
        self.reason = "undecided"

    def _expected(self, record: dict) -> tuple[float, float, str]:
        """(saving, compile seconds, where they come from) for a graph with this record."""
        compiles = record.get("compiles") or []
        if not compiles:
            return self.saving, self.compile_s, "estimate, cold cache"
        # paired measurements only (`paired`): a record's older one-sided "saving" was load-sensitive
        measured = record.get("savings")
        saving = statistics.median(measured) if measured else self.saving
        warm = compiles[1:]  # the first compile of a graph here was the cold one
        compile_s = sorted(warm)[len(warm) // 2] if warm else min(self.warm_s, compiles[0])
        return saving, compile_s, ("measured here" if measured else "estimated saving") + ", warm cache"

    def decide(self, graph: tuple[Optional[str], dict] = (None, {})) -> bool:
        if self.decision is not None:
            return self.decision
        self.calls += 1
        self.stamps.append(time.perf_counter())
        if len(self.stamps) <= self.probe:
            return False
        key, record = graph
        self.key = key
        self.step_s = (self.stamps[-1] - self.stamps[1]) / (len(self.stamps) - 2)  # skip the first (warm-up)
        remaining = max(self.total_steps - self.calls + 1, 0)
        saving, compile_s, source = self._expected(record)
        gain = remaining * self.step_s * saving
        self.decision = gain > compile_s
        self.reason = (f"eager step {1e3 * self.step_s:.1f} ms × {remaining} steps left × saving {saving:.0%} "
                       f"= {gain:.1f} s {'>' if self.decision else '≤'} compile {compile_s:.0f} s ({source})")
        log.info("compile=auto: %s → %s", self.reason, "compile" if self.decision else "stay eager")
        return self.decision

    def paired(self, records: Optional[GraphRecords]) -> bool:
        """Once compiled, at each training step: whether this one runs eager.  Step 0 compiled the graph (not
        timed); steps 1 … 2·probe alternate compiled (odd) and eager (even), each timed call to call
        (backward and optimizer included); at step 2·probe + 1 the saving is recorded."""
        n = len(self.paired_stamps)
        if n > 2 * self.probe + 1:
            return False
        now = time.perf_counter()
        if n >= 2:  # the step before this one, in the mode it ran
            self.paired_s["eager" if (n - 1) % 2 == 0 else "compiled"].append(now - self.paired_stamps[-1])
        self.paired_stamps.append(now)
        if n == 2 * self.probe + 1:
            self._record_saving(records)
            return False
        return n >= 2 and n % 2 == 0

    def _record_saving(self, records: Optional[GraphRecords]) -> None:
        eager, compiled = self.paired_s["eager"], self.paired_s["compiled"]
        if records is None or self.key is None or not eager or not compiled:
            return
        eager_s, compiled_s = statistics.median(eager), statistics.median(compiled)
        saving = max(0.0, 1.0 - compiled_s / eager_s)
        savings = records.get(self.key).get("savings", []) + [round(saving, 4)]
        records.update(self.key, eager_step_s=eager_s, compiled_step_s=compiled_s, savings=savings,
                       saving=statistics.median(savings))


def make_energy_forces(model: nn.Module, mode: str, model_name: str = "", total_steps: int = 0,
                       backend: str = "inductor", preset: str = "small", static_shapes: bool = True):
    """The (graph, create_graph) -> (E, F) function a task uses: compiled ("on"), decided from timed steps
    ("auto", see `AutoDecision`), or eager autograd ("off").  `static_shapes` False (variable-size or
    periodic data: every batch its own number of atoms and edges) traces with symbolic sizes: one compile
    for every batch."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile={mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    dynamic = not static_shapes
    if mode == "on":
        return EnergyForces(model, backend, dynamic=dynamic)
    if mode == "auto":
        return EnergyForces(model, backend, AutoDecision(model_name, total_steps, preset=preset, dynamic=dynamic),
                            dynamic=dynamic)
    return lambda graph, create_graph: energy_and_forces(model, graph, create_graph)
