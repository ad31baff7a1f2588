"""Eager vs compiled (`dcnn.compiled`) energy+force training steps for every model, vs PyG where it exists.

Batch 20 of a bundled data set (`--data`: ethanol by default; `catalysis` and `mlearn-Mo` are periodic
cells of many sizes, compiled with symbolic sizes: one graph for every batch), one thread, Adam step
included, the same batches for every row; each row runs in a fresh subprocess (own peak RSS, own compile).
The eager row also counts the step's matmul FLOPs (torch.utils.flop_counter: mm/bmm/addmm of the forward,
the force backward and the parameter backward) and divides them by this core's measured fp32 matmul rate
(a 1024² mm): the step's FLOP limit, and how far each step is from it.  "compile s" is the first step's extra time
(make_fx trace + inductor compile of forward and backward + warm-up), shown separately from ms/step
(median after warm-up).  "vs eager" is the median of step-by-step ratios of an eager twin of the model (same
weights, own optimizer) and the compiled step, run alternating in the compiled row's process: on a machine
whose speed drifts (seen here: one step 290–540 ms from one batch to the next; separate eager and compiled
runs a few minutes apart gave SchNet on Mo 1.28× where alternating steps gave 1.95×), only a paired ratio
says what compiling buys.  PyG references: SchNet (`torch_geometric.nn.SchNet`) and DimeNet++, with the
same sizes and weights as ours.  `--profile N` also profiles a few more steps of each row (torch.profiler;
the compiled row's inductor kernels by name) and prints where the step goes: the share of the matmuls
(mm, bmm, addmm: what the FLOP limit counts), of inductor's fused kernels (element-wise work, gathers,
scatters, reductions: memory traffic and transcendentals that count no matmul FLOPs) and the N costliest ops;
the compiled row is then compiled cold (caches off) so that inductor counts the bytes its kernels read and
write, and that traffic over this core's copy rate is the step's memory-traffic limit, beside its FLOP limit.

    python -m benchmarks.bench_compile --models schnet,cgcnn --presets small,paper
    python -m benchmarks.bench_compile --models cgcnn --presets small --data mlearn-Mo --profile 8
"""
from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

PYG = ("schnet", "dimenetpp")  # models with a PyG implementation to compare with
TARGETS = {"small": 3.0, "paper": 1.5}  # compiled vs PyG, CPU one thread (issue 11)


def _model(name: str, preset: str, which: str, activation: str):
    from dcnn.activations import replace_activations
    from dcnn.models import MODELS, build_model

    torch.manual_seed(0)
    sizes = MODELS[name][1][preset]
    ours = build_model(name, preset)
    pyg = None
    if name in PYG and which in ("pyg", "eager", "compiled"):
        from dcnn.models import pyg_reference

        pyg = getattr(pyg_reference, f"build_pyg_{name}")(**sizes)
        ours.load_pyg_(pyg)  # same weights in every row
    if activation != "original":
        replace_activations(ours, activation, "paper")
    return pyg if which == "pyg" else ours


def matmul_rate(device: torch.device) -> float:
    """FLOP/s of a 1024 × 1024 fp32 matmul on this core (best of 5): the practical peak of the FLOP limit."""
    a = torch.randn(1024, 1024, device=device)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * 1024 ** 3 / best


def copy_rate(device: torch.device) -> float:
    """Bytes per second (read + written) of copying a 256 MiB buffer on this core (best of 5): the memory
    bandwidth one thread gets, against which the compiled step's memory traffic is its other limit."""
    x = torch.ones(64 * 2**20, device=device)
    y = torch.empty_like(x)
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        y.copy_(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * x.numel() * x.element_size() / best


MATMULS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")
PROFILE_STEPS = 4


def profile_summary(events, steps: int, top: int) -> dict:
    """Where `steps` profiled steps went, from torch.profiler's `key_averages()`: self time per step of the
    matmuls, of inductor's fused kernels (named `..._cpp_fused_...` with `cpp.enable_kernel_profile`), of the
    compiled graphs' Python wrappers (their own time: launching kernels, allocating buffers) and of the rest,
    and the `top` costliest ops (name, share, ms and calls per step)."""
    rows = [(e.key, e.self_cpu_time_total / 1e3 / steps, e.count / steps) for e in events]
    total = sum(ms for _, ms, _ in rows) or float("nan")
    groups = {"matmul": 0.0, "fused kernels": 0.0, "graph wrapper": 0.0, "other": 0.0}
    for key, ms, _ in rows:
        group = ("matmul" if key in MATMULS else "fused kernels" if "cpp_fused" in key
                 else "graph wrapper" if key.startswith("## Call CompiledFxGraph") else "other")
        groups[group] += ms
    costliest = sorted(rows, key=lambda r: -r[1])[:top]
    return {"ms_per_step": total, "shares": {g: ms / total for g, ms in groups.items()},
            "top": [{"op": key, "share": ms / total, "ms": ms, "calls": calls} for key, ms, calls in costliest]}


def time_row(name: str, preset: str, which: str, steps: int, warmup: int, device: str,
             activation: str = "original", flush: bool = True, data: str = "ethanol", profile: int = 0) -> dict:
    from benchmarks.batches import TrainingBatches
    from dcnn.compiled import EnergyForces
    from dcnn.models import energy_and_forces
    from dcnn.numerics import configure_cpu

    flushed = configure_cpu(1, flush)  # as the trainer does (dcnn/numerics.py); PyG's rows get the same
    if profile and which == "compiled":
        import torch._functorch.config as functorch_config
        import torch._inductor.config as inductor_config
        from torch._inductor import metrics

        inductor_config.cpp.enable_kernel_profile = True  # inductor's kernels under their own names
        # inductor counts each kernel's reads and writes while it generates code: no cached graphs here
        inductor_config.fx_graph_cache = False
        functorch_config.enable_autograd_cache = False
        torch._logging.set_logs(inductor_metrics=True)
        metrics.reset()
    dev = torch.device(device)
    model = _model(name, preset, which, activation).to(dev).train()
    ours = model if which != "pyg" else _model(name, preset, "eager", activation).to(dev)
    batches = TrainingBatches(ours, data, steps + warmup, dev)  # cut as the trainer cuts them
    # the compiled row also times an eager twin (same weights, own optimizer), its steps alternating with the
    # compiled ones: their ratio step by step is what compile buys, whatever the machine's load does meanwhile
    twin = copy.deepcopy(model) if which == "compiled" else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    ef = EnergyForces(model, dynamic=not batches.dataset.fixed_size) if which == "compiled" else None

    def train_step(i, m, o, how):
        b = batches(i)
        graph = b["graph"]
        if how == "pyg":
            pos = graph.positions.detach().clone().requires_grad_(True)
            e = m(graph.numbers, pos, graph.batch).view(-1)
            (g,) = torch.autograd.grad(e.sum(), pos, create_graph=True)
            f = -g
        elif how == "compiled":
            e, f = ef(graph)
        else:
            e, f = energy_and_forces(m, graph, create_graph=True)
        loss = (e - b["energy_labels"]).abs().mean() + 30 * (f - b["force_labels"]).abs().mean()
        o.zero_grad(set_to_none=True)
        loss.backward(inputs=list(m.parameters()))  # as the trainer: no gradient for the positions
        o.step()

    def step(i):
        train_step(i, model, opt, which)

    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    def timed(fn, i):
        sync()
        t = time.perf_counter()
        fn(i)
        sync()
        return time.perf_counter() - t

    times, twin_times = [], []
    twin_step = None
    if twin is not None:
        twin_opt = torch.optim.Adam(twin.parameters(), lr=1e-4, fused=True)
        twin_step = lambda i: train_step(i, twin, twin_opt, "eager")  # noqa: E731
    for i in range(steps + warmup):
        if twin_step is not None and i % 2:  # alternate which one goes first
            twin_times.append(timed(twin_step, i))
        times.append(timed(step, i))
        if twin_step is not None and not i % 2:
            twin_times.append(timed(twin_step, i))
    twin_times = twin_times[warmup:]
    ms = 1e3 * statistics.median(times[warmup:])
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    out = {"model": name, "preset": preset, "which": which, "activation": activation, "data": data,
           "ms_per_step": ms, "first_step_s": times[0], "peak_mib": peak, "device": str(dev),
           "flush_denormals": flushed}
    if ef is not None:
        out.update(compile_s=ef.compile_time_s, fell_back=ef.failed, graphs=len(ef.graphs))
    if twin_times:
        ratios = sorted(e / c for e, c in zip(twin_times, times[warmup:]))
        q = statistics.quantiles(ratios, n=4)
        out.update(paired_eager_ms=1e3 * statistics.median(twin_times), paired_ratio=statistics.median(ratios),
                   paired_ratio_quartiles=[q[0], q[2]])
    if profile and which == "compiled":
        out.update(compiled_bytes=int(metrics.num_bytes_accessed), copy_rate=copy_rate(dev))
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profiler(activities=activities) as prof:
            for i in range(PROFILE_STEPS):
                step(warmup + i % steps)
        out["profile"] = profile_summary(prof.key_averages(), PROFILE_STEPS, profile)
    if which == "eager":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as counter:
            step(0)
        out.update(matmul_flops=counter.get_total_flops(), matmul_rate=matmul_rate(dev))
    return out


def print_profile(label: str, summary: dict) -> None:
    shares = ", ".join(f"{g} {100 * v:.0f} %" for g, v in summary["shares"].items())
    print(f"  profile of {label}: {summary['ms_per_step']:.1f} ms of ops per step: {shares}", flush=True)
    for r in summary["top"]:
        print(f"    {100 * r['share']:5.1f} %  {r['ms']:8.2f} ms  {r['calls']:6.1f} calls  {r['op'][:90]}", flush=True)


def run_row(name, preset, which, device, steps=None, activation="original", flush=True, data="ethanol",
            profile=0) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_compile", "--one", name, preset, which, "--device", device,
           "--activation", activation, "--flush-denormals", "on" if flush else "off", "--data", data]
    if steps:
        cmd += ["--steps", str(steps)]
    if profile:
        cmd += ["--profile", str(profile)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"model": name, "preset": preset, "which": which, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="schnet,cgcnn,forcenet,dimenetpp,gemnet_t")
    p.add_argument("--presets", default="small,paper")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 30 small, 5 paper)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--activation", default="original")
    p.add_argument("--data", default="ethanol", help="a bundled data set: ethanol, aspirin (one molecule, static "
                   "shapes), catalysis, mlearn-Mo, mlearn-Si (periodic cells of many sizes: symbolic sizes)")
    p.add_argument("--flush-denormals", choices=("on", "off", "both"), default="both",
                   help="flush denormal floats to zero as the trainer does (on), not (off), or a row of each "
                        "(both, the default: the gap is what a CPU's denormal penalty costs)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile each row and print its matmul / fused-kernel shares and N costliest ops")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "PRESET", "WHICH"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        name, preset, which = a.one
        steps = a.steps or (30 if preset == "small" else 5)
        flush = a.flush_denormals != "off"
        print(json.dumps(time_row(name, preset, which, steps, 3, a.device, a.activation, flush, a.data, a.profile)))
        return 0
    rows = []
    flushes = {"on": (True,), "off": (False,), "both": (False, True)}[a.flush_denormals]
    print(f"data: {a.data}; GFLOP: matmul FLOPs of one eager step; limit: GFLOP / this core's 1024² matmul rate")
    print(f"{'model':10s} {'preset':6s} {'denormals':9s} {'PyG ms':>8s} {'eager ms':>9s} {'compiled ms':>11s} "
          f"{'compile s':>9s} {'vs eager':>8s} {'vs PyG':>7s} {'GFLOP':>6s} {'limit ms':>8s} {'/limit':>6s}  device",
          flush=True)
    for preset in a.presets.split(","):
        for name in a.models.split(","):
            for flush in flushes:  # same setting for every implementation of a row (PyG's too)
                pyg_row = ("pyg",) if name in PYG and a.data in ("ethanol", "aspirin") else ()
                res = {w: run_row(name, preset, w, a.device, a.steps, a.activation, flush, a.data, a.profile)
                       for w in pyg_row + ("eager", "compiled")}
                rows.extend(res.values())
                mode = "flushed" if flush else "kept"
                bad = [f"{w}: {r['error']}" for w, r in res.items() if "error" in r]
                if bad:
                    print(f"{name:10s} {preset:6s} {mode:9s} failed: {bad}", flush=True)
                    continue
                c, e = res["compiled"], res["eager"]
                pyg = res.get("pyg", {}).get("ms_per_step")
                limit_ms = 1e3 * e["matmul_flops"] / e["matmul_rate"]
                best = min(c["ms_per_step"], e["ms_per_step"])
                note = f"  (fell back to eager: {c['fell_back']})" if c.get("fell_back") else ""
                q1, q3 = c["paired_ratio_quartiles"]
                note += f"  (vs eager: eager and compiled steps alternating; quartiles {q1:.2f}–{q3:.2f})"
                print(f"{name:10s} {preset:6s} {mode:9s} {pyg if pyg else float('nan'):8.2f} {e['ms_per_step']:9.2f} "
                      f"{c['ms_per_step']:11.2f} {c['compile_s']:9.1f} {c['paired_ratio']:7.2f}x "
                      f"{(pyg / c['ms_per_step']) if pyg else float('nan'):6.2f}x {e['matmul_flops'] / 1e9:6.2f} "
                      f"{limit_ms:8.1f} {best / limit_ms:5.1f}x  {c['device']}{note}", flush=True)
                if flush and pyg and preset in TARGETS and pyg / c["ms_per_step"] < TARGETS[preset]:
                    print(f"  target missed: {name} {preset} compiled {pyg / c['ms_per_step']:.2f}x PyG "
                          f"< {TARGETS[preset]}x", flush=True)
                for w, r in res.items():
                    if "profile" in r:
                        print_profile(f"{name} {preset} {mode} {w}", r["profile"])
                if "compiled_bytes" in c:
                    traffic_ms = 1e3 * c["compiled_bytes"] / c["copy_rate"]
                    print(f"  memory traffic of the compiled step (inductor's count of its kernels' reads and writes, "
                          f"at the first batch's sizes): {c['compiled_bytes'] / 1e9:.2f} GB; at this core's copy rate "
                          f"({c['copy_rate'] / 1e9:.1f} GB/s) {traffic_ms:.0f} ms: the compiled step is "
                          f"{c['ms_per_step'] / traffic_ms:.1f}x that (its matmul-FLOP limit: "
                          f"{c['ms_per_step'] / limit_ms:.1f}x; compiled cold, caches off)", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
