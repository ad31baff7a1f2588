"""Time one energy+force training step of our SchNet vs PyG's SchNet (identical sizes and weights).

Batch 20 of the bundled ethanol data, one thread, the same batches for both, Adam step included.
Prints ms/step (median of `--steps` after warm-up), the speed ratio and peak memory (CPU: RSS growth
measured in a fresh subprocess per model; CUDA: max_memory_allocated).
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
from dcnn.models import build_model
from dcnn.models.pyg_reference import build_pyg_schnet
from dcnn.models.schnet import SCHNET_PRESETS


def _batches(steps: int, batch: int, seed: int = 0):
    ds = load_dataset(DEFAULT_DATASET)
    rng = np.random.default_rng(seed)
    idx = [rng.choice(len(ds), batch, replace=False) for _ in range(steps)]
    return ds, idx


def time_model(which: str, preset: str, steps: int, warmup: int, device: str) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dev = torch.device(device)
    sizes = SCHNET_PRESETS[preset]
    pyg = build_pyg_schnet(**sizes)
    ours = build_model("schnet", preset).load_pyg_(pyg)
    model = (ours if which == "ours" else pyg).to(dev)
    ds, idx = _batches(steps + warmup, 20)
    R = torch.as_tensor(ds.positions, dtype=torch.float32, device=dev)
    E = torch.as_tensor(ds.energies / 1e4, dtype=torch.float32, device=dev)
    F = torch.as_tensor(ds.forces / 1e4, dtype=torch.float32, device=dev)
    z = torch.as_tensor(ds.numbers, device=dev)
    n = ds.n_atoms
    zb = z.repeat(20)
    batch_vec = torch.arange(20, device=dev).repeat_interleave(n)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as our trainer

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
    return {"model": which, "preset": preset, "ms_per_step": 1e3 * statistics.median(times),
            "peak_mib": peak, "device": str(dev)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--presets", nargs="+", default=["small", "paper"])
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 50 small, 10 paper)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--one", nargs=2, metavar=("MODEL", "PRESET"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:  # child process: one model, so peak RSS is its own
        steps = a.steps or (50 if a.one[1] == "small" else 10)
        print(json.dumps(time_model(a.one[0], a.one[1], steps, 3, a.device)))
        return
    rows = []
    for preset in a.presets:
        res = {}
        for which in ("pyg", "ours"):
            cmd = [sys.executable, "-m", "benchmarks.bench_schnet", "--one", which, preset, "--device", a.device]
            if a.steps:
                cmd += ["--steps", str(a.steps)]
            res[which] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        ratio = res["pyg"]["ms_per_step"] / res["ours"]["ms_per_step"]
        rows.append((preset, res["pyg"], res["ours"], ratio))
        print(f"{preset:6s} PyG {res['pyg']['ms_per_step']:8.2f} ms/step ({res['pyg']['peak_mib']:7.1f} MiB)  "
              f"ours {res['ours']['ms_per_step']:8.2f} ms/step ({res['ours']['peak_mib']:7.1f} MiB)  "
              f"speed-up {ratio:.2f}x  [{res['ours']['device']}]", flush=True)
    targets = {"small": 2.0, "paper": 1.2}
    missed = [(p, r) for p, _, _, r in rows if p in targets and r < targets[p]]
    for p, r in missed:
        print(f"target missed: {p} speed-up {r:.2f}x < {targets[p]}x")


if __name__ == "__main__":
    main()
