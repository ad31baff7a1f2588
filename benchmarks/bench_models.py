"""Time one energy+force training step of every model, and of PyG's version where PyG has one.

Batch 20 of the bundled ethanol data, one thread, Adam step included, the same batches for every model.
A row per model: our ms/step (median of `--steps` after warm-up) and, for SchNet and DimeNet++, PyG's
`SchNet` / `DimeNetPlusPlus` with the same sizes and the same weights (copied into ours by `load_pyg_`),
the speed ratio, and peak memory (CPU: RSS growth measured in a fresh subprocess per model; CUDA:
max_memory_allocated).  PyG's radius graph and DimeNet triplets need compiled extensions that have no
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
from dcnn.models import MODEL_NAMES, MODELS, build_model

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


def time_model(model_name: str, which: str, preset: str, steps: int, warmup: int, device: str) -> dict:
    torch.set_num_threads(1)
    dev = torch.device(device)
    model = _build(model_name, preset, which).to(dev)
    ds, idx = _batches(steps + warmup, 20)
    R = torch.as_tensor(ds.positions, dtype=torch.float32, device=dev)
    E = torch.as_tensor(ds.energies / 1e4, dtype=torch.float32, device=dev)
    F = torch.as_tensor(ds.forces / 1e4, dtype=torch.float32, device=dev)
    z = torch.as_tensor(ds.numbers, device=dev)
    n = ds.n_atoms
    zb = z.repeat(20)
    batch_vec = torch.arange(20, device=dev).repeat_interleave(n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as our trainer
    model.train()

    def step(i):
        sel = torch.as_tensor(idx[i], device=dev)
        pos = R[sel]
        if which == "ours":
            pos = pos.requires_grad_(True)
            e = model(pos, z)
        else:
            pos = pos.reshape(-1, 3).requires_grad_(True)
            e = model(zb, pos, batch_vec).view(-1)
        (g,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
        loss = (e - E[sel]).abs().mean() + 30 * (-g.reshape(20, n, 3) - F[sel]).abs().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(steps + warmup):
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t = time.perf_counter()
        step(i)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    return {"model": model_name, "impl": which, "preset": preset, "ms_per_step": 1e3 * statistics.median(times),
            "peak_mib": peak, "device": str(dev)}


def _csv(text: str) -> list[str]:
    names = [s for s in text.split(",") if s]
    bad = [s for s in names if s not in MODEL_NAMES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown model(s) {bad}; known: {', '.join(MODEL_NAMES)}")
    return names


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=_csv, default=list(MODEL_NAMES), help="comma-separated (default: all)")
    p.add_argument("--presets", nargs="+", default=["small"], choices=["small", "paper"])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 small, 5 paper)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "IMPL", "PRESET"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:  # child process: one model, so peak RSS is its own
        steps = a.steps or (30 if a.one[2] == "small" else 5)
        print(json.dumps(time_model(*a.one, steps, 3, a.device)))
        return
    print(f"{'model':10s} {'preset':6s} {'ours ms/step':>12s} {'PyG ms/step':>12s} {'PyG/ours':>9s} "
          f"{'RSS ours':>9s} {'RSS PyG':>8s}  device", flush=True)
    slower = []
    for preset in a.presets:
        for model in a.models:
            res = {}
            for which in ("ours", "pyg") if model in PYG_PEERS else ("ours",):
                cmd = [sys.executable, "-m", "benchmarks.bench_models", "--one", model, which, preset,
                       "--device", a.device]
                if a.steps:
                    cmd += ["--steps", str(a.steps)]
                res[which] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            ours, pyg = res["ours"], res.get("pyg")
            ratio = pyg["ms_per_step"] / ours["ms_per_step"] if pyg else None
            print(f"{model:10s} {preset:6s} {ours['ms_per_step']:12.2f} "
                  f"{pyg['ms_per_step'] if pyg else float('nan'):12.2f} "
                  f"{'' if ratio is None else f'{ratio:.2f}x':>9s} {ours['peak_mib']:7.1f}Mi "
                  f"{pyg['peak_mib'] if pyg else float('nan'):6.1f}Mi  {ours['device']}", flush=True)
            if ratio is not None and ratio < 1:
                slower.append((model, preset, ratio))
    for model, preset, ratio in slower:
        print(f"slower than PyG: {model} at {preset} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
