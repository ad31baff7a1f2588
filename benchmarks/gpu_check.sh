#!/usr/bin/env bash
# GPU check for a machine with one CUDA GPU (run from the repo root; results under $OUT):
#  1. step time of every model (paper and small presets, batch 20; PyG's SchNet and DimeNet++ next to
#     ours) on GPU, and of SchNet, DimeNet++ and GemNet-T (paper) on CPU;
#     eager vs compiled vs PyG for every model at paper size on CUDA (benchmarks/bench_compile.py);
#  2. a 2-arm study, paper SchNet, 1 epoch, --gpus-per-trial 0.5: both trials must share the one GPU,
#     run at the same time and train on cuda.
set -euo pipefail
OUT=${OUT:-$PWD/gpu-check}
mkdir -p "$OUT"
export RAY_AUTH_MODE=disabled PYTHONUNBUFFERED=1
python3 -c "import dcnn" 2>/dev/null || { python3 -m pip install -q torch==2.13.0 && python3 -m pip install -q -e ".[dev]"; }
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print(torch.__version__, torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
python3 -m benchmarks.bench_models --presets paper small --device cuda --steps 30 | tee "$OUT/bench_gpu.txt"
python3 -m benchmarks.bench_models --models schnet,dimenetpp,gemnet_t --presets paper --device cpu --steps 3 | tee "$OUT/bench_cpu.txt"
# compiled (make_fx + torch.compile) vs eager vs PyG at paper size on CUDA (compile time shown separately)
python3 -m benchmarks.bench_compile --presets paper --device cuda --steps 30 --json "$OUT/bench_compile_gpu.json" \
  | tee "$OUT/bench_compile_gpu.txt"
dcnn-ablate ablate --study benchmarks/gpu_check_study.yaml --gpus-per-trial 0.5 --cpus-per-trial 4 \
  --address local --storage "$OUT/results" --experiment gpu-check | tee "$OUT/ablate.txt"
python3 - "$OUT" <<'PY'
import json, sys
import pandas as pd
out = sys.argv[1]
t = pd.read_csv(f"{out}/results/gpu-check/report/trials.csv", dtype={"gpu_ids": str})
checks = {
    "two_trials": len(t) == 2,
    "same_gpu": t.gpu_ids.nunique() == 1 and t.gpu_ids.iloc[0] != "nan",
    "on_cuda": (t.device.str.startswith("cuda")).all(),
    "concurrent": bool((t.finished_at > t.started_at.max()).all()),
}
print(json.dumps({"checks": checks, "trials": t[["arm", "gpu_ids", "device", "started_at", "finished_at",
                                                   "test_force_loss"]].to_dict("records")}, indent=2, default=str))
sys.exit(0 if all(checks.values()) else 1)
PY
