"""Seed ensembles vs separate seeds: one energy+force training step (Adam included) of S seeds of one arm.

For S = 1, 3, 8: S models trained one after another (what S trials do today: eager autograd, the trainer's
own step), against one `dcnn.ensemble.SeedEnsemble` step (stack_module_state + vmap over functional_call,
forces by torch.func.vjp, parameter gradients by torch.func.grad), each seed on its own batch of 20
ethanol frames, one thread, denormals flushed as the trainer does.  The two are interleaved step by step
so other load on the machine hits both alike; median over the timed steps.  A row per (model, S): ms per
seed-step both ways and the speed-up per seed.

    python -m benchmarks.bench_ensemble --models schnet,cgcnn --sizes 1,3,8
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from benchmarks.batches import TrainingBatches
from dcnn.activations import replace_activations
from dcnn.ensemble import SeedEnsemble
from dcnn.models import build_model, energy_and_forces
from dcnn.numerics import configure_cpu

DECISION_SPEEDUP = 1.5  # per seed at S = 3: what would justify training an arm's seeds together (issue 18)


def time_sizes(model_name: str, sizes: list[int], steps: int, warmup: int, activation: str) -> list[dict]:
    configure_cpu(1, True)
    rows = []
    for S in sizes:
        models = []
        for seed in range(S):
            torch.manual_seed(seed)
            m = build_model(model_name, "small")
            if activation != "original":
                replace_activations(m, activation, "paper")
            models.append(m.train())
        singles = [copy.deepcopy(m) for m in models]
        ensemble = SeedEnsemble(models)
        opt_ens = torch.optim.Adam(ensemble.parameters(), lr=1e-4, fused=True)
        opts = [torch.optim.Adam(m.parameters(), lr=1e-4, fused=True) for m in singles]
        # each seed its own batches (seeded differently), cut as the trainer cuts them
        batches = [TrainingBatches(singles[0], "ethanol", steps + warmup, torch.device("cpu"), seed=seed)
                   for seed in range(S)]
        t_sep, t_ens = [], []
        for i in range(steps + warmup):
            per_seed = [b(i) for b in batches]
            t = time.perf_counter()
            for s, (m, o) in enumerate(zip(singles, opts)):
                b = per_seed[s]
                e, f = energy_and_forces(m, b["graph"], create_graph=True)
                loss = (e - b["energy_labels"]).abs().mean() + 30 * (f - b["force_labels"]).abs().mean()
                o.zero_grad(set_to_none=True)
                loss.backward(inputs=list(m.parameters()))  # as the trainer: no gradient for the positions
                o.step()
            t1 = time.perf_counter()
            ensemble.step(opt_ens, torch.stack([b["graph"].positions for b in per_seed]), per_seed[0]["graph"],
                          torch.stack([b["energy_labels"] for b in per_seed]),
                          torch.stack([b["force_labels"] for b in per_seed]), 30.0)
            t2 = time.perf_counter()
            if i >= warmup:
                t_sep.append(t1 - t), t_ens.append(t2 - t1)
        sep, ens = 1e3 * statistics.median(t_sep) / S, 1e3 * statistics.median(t_ens) / S
        rows.append({"model": model_name, "S": S, "separate_ms_per_seed": sep, "ensemble_ms_per_seed": ens,
                     "speedup_per_seed": sep / ens, "activation": activation})
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="schnet,cgcnn")
    p.add_argument("--sizes", default="1,3,8")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--activation", default="irelu")
    p.add_argument("--json", help="also write the rows to this file")
    a = p.parse_args(argv)
    sizes = [int(x) for x in a.sizes.split(",")]
    print(f"{'model':8s} {'S':>3s} {'separate ms/seed':>17s} {'ensemble ms/seed':>17s} {'speed-up':>9s}", flush=True)
    rows = []
    for name in a.models.split(","):
        for r in time_sizes(name, sizes, a.steps, 3, a.activation):
            rows.append(r)
            print(f"{name:8s} {r['S']:3d} {r['separate_ms_per_seed']:17.2f} {r['ensemble_ms_per_seed']:17.2f} "
                  f"{r['speedup_per_seed']:8.2f}x", flush=True)
    at3 = [r for r in rows if r["S"] == 3]
    if at3:
        worth = all(r["speedup_per_seed"] >= DECISION_SPEEDUP for r in at3)
        said = ", ".join(f"{r['model']} {r['speedup_per_seed']:.2f}x" for r in at3)
        print(f"S = 3: {said} per seed: {'at least' if worth else 'below'} the {DECISION_SPEEDUP}x that would "
              f"justify training an arm's seeds together on this CPU", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
