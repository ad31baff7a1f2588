"""Time one energy+force training step of every model, and of PyG's version where PyG has one.

Batch 20 of the bundled ethanol data, one thread, Adam step included, the same batches for every model.
A row per model: our ms/step (median of `--steps` after warm-up) and, for SchNet and DimeNet++, PyG's
`SchNet` / `DimeNetPlusPlus` with the same sizes and the same weights (copied into ours by `load_pyg_`),
timed in the same process with the two models' steps interleaved (so load from other processes hits both
alike), the speed ratio, and peak memory (CPU: RSS growth over 3 steps in a fresh process per model;
CUDA: max_memory_allocated).  PyG's radius graph and DimeNet triplets need compiled extensions that have no
wheels here; dcnn/models/pyg_reference.py gives them in plain torch (same edges), so PyG's DimeNet++ time
includes building its graph every step, as it would with torch-cluster.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from dcnn.data import DEFAULT_DATASET, load_dataset
from dcnn.families import family_of
from dcnn.models import MODEL_NAMES, MODELS, build_model
from dcnn.numerics import configure_cpu

# the interatomic potentials (the PINN network has no atoms to step over)
POTENTIALS = [m for m in MODEL_NAMES if family_of(m).name == "molecule"]

PYG_PEERS = ("schnet", "dimenetpp")  # models PyG implements


def _batches(steps: int, batch: int, seed: int = 0):
    ds = load_dataset(DEFAULT_DATASET)
    rng = np.random.default_rng(seed)
    idx = [rng.choice(len(ds), batch, replace=False) for _ in range(steps)]
    return ds, idx


def _build(model: str, preset: str, which: str):
    """Our model (with PyG's weights where PyG has the model) or PyG's."""
    torch.manual_seed(0)
    sizes = MODELS[model][1][preset]
    if model == "schnet":
        from dcnn.models.pyg_reference import build_pyg_schnet

        pyg = build_pyg_schnet(**sizes)
    elif model == "dimenetpp":
        from dcnn.models.pyg_reference import build_pyg_dimenetpp

        pyg = build_pyg_dimenetpp(**sizes)
    else:
        if which == "pyg":
            raise ValueError(f"PyG has no {model}")
        return build_model(model, preset)
    return build_model(model, preset).load_pyg_(pyg) if which == "ours" else pyg


class _Stepper:
    """One energy+force training step (Adam included) of one implementation, on fixed batches."""

    def __init__(self, model_name: str, which: str, preset: str, n_batches: int, dev: torch.device):
        self.which = which
        self.model = _build(model_name, preset, which).to(dev).train()
        ds, self.idx = _batches(n_batches, 20)
        self.R = torch.as_tensor(ds.positions, dtype=torch.float32, device=dev)
        self.E = torch.as_tensor(ds.energies / 1e4, dtype=torch.float32, device=dev)
        self.F = torch.as_tensor(ds.forces / 1e4, dtype=torch.float32, device=dev)
        self.z = torch.as_tensor(ds.numbers, device=dev)
        self.n = ds.n_atoms
        self.zb = self.z.repeat(20)
        self.batch_vec = torch.arange(20, device=dev).repeat_interleave(self.n)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, fused=True)  # as our trainer
        self.dev = dev

    def __call__(self, i: int) -> None:
        sel = torch.as_tensor(self.idx[i], device=self.dev)
        pos = self.R[sel]
        if self.which == "ours":
            pos = pos.requires_grad_(True)
            e = self.model(pos, self.z)
        else:
            pos = pos.reshape(-1, 3).requires_grad_(True)
            e = self.model(self.zb, pos, self.batch_vec).view(-1)
        (g,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
        loss = (e - self.E[sel]).abs().mean() + 30 * (-g.reshape(20, self.n, 3) - self.F[sel]).abs().mean()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()


def time_models(model_name: str, impls: list[str], preset: str, steps: int, warmup: int, device: str,
                flush: bool = True) -> dict:
    """ms/step of each implementation, their steps interleaved (ours, PyG, ours, ...) so that load from
    other processes on a shared machine hits both alike; median over the timed steps.  Denormals are
    flushed (or not) for both alike, in one process (dcnn/numerics.py)."""
    configure_cpu(1, flush)
    dev = torch.device(device)
    torch.manual_seed(0)
    steppers = {w: _Stepper(model_name, w, preset, steps + warmup, dev) for w in impls}
    times: dict[str, list[float]] = {w: [] for w in impls}
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


def peak_memory(model_name: str, which: str, preset: str, device: str) -> float:
    """MiB: peak-RSS growth over 3 steps (CPU; run alone in a fresh process) or CUDA's max_memory_allocated."""
    configure_cpu(1, True)
    dev = torch.device(device)
    torch.manual_seed(0)
    step = _Stepper(model_name, which, preset, 3, dev)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # after the model and data are built
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(3):
        step(i)
    return (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)


def _csv(text: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    bad = [s for s in names if s not in POTENTIALS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {bad}; known: {', '.join(POTENTIALS)}")
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_csv, default=list(POTENTIALS), help="comma-separated (default: every potential)")
    p.add_argument("--presets", nargs="+", default=["small"], choices=["small", "paper"])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 small, 5 paper)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--flush-denormals", choices=("on", "off"), default="on",
                   help="flush denormal floats to zero as the trainer does (default), or not")
    p.add_argument("--time", nargs=2, metavar=("MODEL", "PRESET"), help=argparse.SUPPRESS)
    p.add_argument("--memory", nargs=3, metavar=("MODEL", "IMPL", "PRESET"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.time:  # child processes: a fresh interpreter per measurement
        steps = a.steps or (30 if a.time[1] == "small" else 5)
        impls = ["ours", "pyg"] if a.time[0] in PYG_PEERS else ["ours"]
        print(json.dumps(time_models(a.time[0], impls, a.time[1], steps, 3, a.device, a.flush_denormals == "on")))
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

    print(f"{'model':10s} {'preset':6s} {'ours ms/step':>12s} {'PyG ms/step':>12s} {'PyG/ours':>9s} "
          f"{'RSS ours':>9s} {'RSS PyG':>8s}  device: {a.device}, denormals "
          f"{'flushed' if a.flush_denormals == 'on' else 'kept'}", flush=True)
    slower = []
    for preset in a.presets:
        for model in a.models:
            ms = child("--time", model, preset)
            mem = {w: child("--memory", model, w, preset) for w in ms}
            ratio = ms["pyg"] / ms["ours"] if "pyg" in ms else None
            print(f"{model:10s} {preset:6s} {ms['ours']:12.2f} {ms.get('pyg', float('nan')):12.2f} "
                  f"{'' if ratio is None else f'{ratio:.2f}x':>9s} {mem['ours']:7.1f}Mi "
                  f"{mem.get('pyg', float('nan')):6.1f}Mi", flush=True)
            if ratio is not None and ratio < 1:
                slower.append((model, preset, ratio))
    for model, preset, ratio in slower:
        print(f"slower than PyG: {model} at {preset} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
