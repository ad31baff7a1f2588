"""Time one energy+force training step of every model on the graph layout, against the dense layout it
replaced (before/after, issue 17) and against PyG's version where PyG has one.

Batches of 20 frames cut as the trainer cuts them (benchmarks/batches.py), one thread, Adam step included,
the same batches for every implementation.  A row per (model, data set): our graph step (ms, median of
`--steps` after warm-up), the dense all-pairs step of the same model with the same weights (the models as
they were, kept in tests/legacy_dense as references; molecule data sets only), PyG's `SchNet` /
`DimeNetPlusPlus` with the same weights, the ratios, and peak memory (RSS growth over 3 steps in a fresh
process).  The implementations' steps are interleaved in one process, so load from other processes hits
them alike.  PyG's radius graph and DimeNet triplets need compiled extensions that have no wheels here;
dcnn/models/pyg_reference.py gives them in plain torch (same edges), so PyG's time includes building its
graph every step, as it would with torch-cluster.  On a periodic data set (`catalysis`; `mlearn-Mo`, real DFT
cells of 2–54 atoms, radius graphs at each model's own cutoff) only our graph step exists: that row says what
one step costs there.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.batches import C, TrainingBatches
from dcnn.atomistic.family import ATOMISTIC
from dcnn.registry import family_of
from dcnn.models import MODEL_NAMES, MODELS, build_model, energy_and_forces
from dcnn.numerics import configure_cpu

# the interatomic potentials (the PINN network has no atoms to step over)
POTENTIALS = [m for m in MODEL_NAMES if family_of(m) is ATOMISTIC]
PYG_PEERS = ("schnet", "dimenetpp")  # models PyG implements
LEGACY = {"schnet": "SchNet", "cgcnn": "CGCNN", "forcenet": "ForceNet", "dimenetpp": "DimeNetPP", "gemnet_t": "GemNetT"}
DATASETS = ("ethanol", "aspirin", "catalysis", "mlearn-Mo")
PERIODIC = ("catalysis", "mlearn-Mo")  # cells of many sizes: no dense layout, no PyG radius graph with images


def _legacy(model: str, preset: str):
    """The dense model as it was (tests/legacy_dense), or None where it has none."""
    tests = str(Path(__file__).resolve().parent.parent / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    try:
        module = importlib.import_module(f"legacy_dense.{model}")
    except ImportError:
        return None
    cls = getattr(module, LEGACY[model])
    # sizes the graph models gained since (CGCNN's readout) are not the dense model's: pass those it takes
    taken = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in MODELS[model][1][preset].items() if k in taken})


def _models(model: str, preset: str, impls: list[str]) -> dict:
    """Our graph model and, where asked, the dense model and PyG's, all with the same weights."""
    torch.manual_seed(0)
    ours = build_model(model, preset)
    out = {"graph": ours}
    if "pyg" in impls:
        from dcnn.models import pyg_reference

        pyg = getattr(pyg_reference, f"build_pyg_{model}")(**MODELS[model][1][preset])
        ours.load_pyg_(pyg)
        out["pyg"] = pyg
    if "dense" in impls:
        dense = _legacy(model, preset)
        if dense is not None:
            dense.load_state_dict(ours.state_dict(), strict=False)
            out["dense"] = dense
    return out


class _Stepper:
    """One energy+force training step (Adam included) of one implementation."""

    def __init__(self, which: str, model: torch.nn.Module, batches: TrainingBatches):
        self.which, self.model, self.batches = which, model.train(), batches
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, fused=True)  # as our trainer

    def __call__(self, i: int) -> None:
        b = self.batches(i)
        graph = b["graph"]
        if self.which == "graph":
            e, f = energy_and_forces(self.model, graph, create_graph=True)
        else:
            n = int(graph.n_atoms[0])
            pos = graph.positions.detach().clone().requires_grad_(True)
            if self.which == "dense":
                e = self.model(pos.view(-1, n, 3), graph.numbers[:n])
            else:
                e = self.model(graph.numbers, pos, graph.batch).view(-1)
            (g,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
            f = -g
        loss = (e - b["energy_labels"]).abs().mean() + 30 * (f - b["force_labels"]).abs().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward(inputs=list(self.model.parameters()))  # as the trainer: no gradient for the positions
        self.opt.step()


def _impls(model: str, dataset: str) -> list[str]:
    if dataset in PERIODIC:
        return ["graph"]
    return ["graph", "dense"] + (["pyg"] if model in PYG_PEERS else [])


def time_models(model: str, dataset: str, preset: str, steps: int, warmup: int, device: str,
                flush: bool = True) -> dict:
    """ms/step of each implementation, their steps interleaved so that load from other processes hits them
    alike; median over the timed steps.  Denormals flushed (or not) for all alike (dcnn/numerics.py)."""
    configure_cpu(1, flush)
    dev = torch.device(device)
    models = _models(model, preset, _impls(model, dataset))
    batches = TrainingBatches(models["graph"].to(dev), dataset, steps + warmup, dev)
    steppers = {w: _Stepper(w, m.to(dev), batches) for w, m in models.items()}
    times: dict[str, list[float]] = {w: [] for w in steppers}
    for i in range(steps + warmup):
        for w, step in steppers.items():
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            step(i)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if i >= warmup:
                times[w].append(time.perf_counter() - t)
    return {w: 1e3 * statistics.median(t) for w, t in times.items()}


def peak_memory(model: str, dataset: str, which: str, preset: str, device: str) -> float:
    """MiB: peak-RSS growth over 3 steps (CPU; run alone in a fresh process) or CUDA's max_memory_allocated."""
    configure_cpu(1, True)
    dev = torch.device(device)
    models = _models(model, preset, [which, "graph"])
    batches = TrainingBatches(models["graph"].to(dev), dataset, 3, dev)
    step = _Stepper(which, models[which].to(dev), batches)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the model and data are built
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(3):
        step(i)
    return (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)


def _csv(known):
    def parse(text: str) -> list[str]:
        names = [s for s in text.split(",") if s]
        bad = [s for s in names if s not in known]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"unknown {bad}; known: {', '.join(known)}")
        return names
    return parse


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_csv(POTENTIALS), default=list(POTENTIALS), help="comma-separated (default: every potential)")
    p.add_argument("--datasets", type=_csv(DATASETS), default=list(DATASETS), help="comma-separated bundled data sets")
    p.add_argument("--presets", nargs="+", default=["small"], choices=["small", "paper"])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 small, 5 paper)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--flush-denormals", choices=("on", "off"), default="on",
                   help="flush denormal floats to zero as the trainer does (default), or not")
    p.add_argument("--time", nargs=3, metavar=("MODEL", "DATASET", "PRESET"), help=argparse.SUPPRESS)
    p.add_argument("--memory", nargs=4, metavar=("MODEL", "DATASET", "IMPL", "PRESET"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.time:  # child processes: a fresh interpreter per measurement
        steps = a.steps or (30 if a.time[2] == "small" else 5)
        print(json.dumps(time_models(a.time[0], a.time[1], a.time[2], steps, 3, a.device, a.flush_denormals == "on")))
        return
    if a.memory:
        print(json.dumps(peak_memory(*a.memory, a.device)))
        return

    def child(*args):
        cmd = [sys.executable, "-m", "benchmarks.bench_models", *args, "--device", a.device,
               "--flush-denormals", a.flush_denormals]
        if a.steps:
            cmd += ["--steps", str(a.steps)]
        return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)

    print(f"{'model':10s} {'data':10s} {'preset':6s} {'graph ms':>9s} {'dense ms':>9s} {'PyG ms':>8s} "
          f"{'dense/graph':>11s} {'PyG/graph':>9s} {'RSS graph':>9s}  device: {a.device}, denormals "
          f"{'flushed' if a.flush_denormals == 'on' else 'kept'}, labels / {C:g}", flush=True)
    nan = float("nan")
    for preset in a.presets:
        for dataset in a.datasets:
            for model in a.models:
                ms = child("--time", model, dataset, preset)
                mem = child("--memory", model, dataset, "graph", preset)
                g = ms["graph"]
                print(f"{model:10s} {dataset:10s} {preset:6s} {g:9.2f} {ms.get('dense', nan):9.2f} "
                      f"{ms.get('pyg', nan):8.2f} {ms.get('dense', nan) / g:10.2f}x {ms.get('pyg', nan) / g:8.2f}x "
                      f"{mem:7.1f}Mi", flush=True)


if __name__ == "__main__":
    main()
