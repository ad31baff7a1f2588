"""`benchmarks.bench_compile --profile`: where a training step's time goes, from real torch.profiler events."""
import math

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.bench_compile import _model, profile_summary, run_row, time_row


def test_profile_summary_splits_a_step_into_matmuls_and_the_rest():
    torch.manual_seed(0)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    x = torch.randn(2_000_000)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            a @ b
            torch.exp(x)
    summary = profile_summary(prof.key_averages(), steps=2, top=3)
    shares = summary["shares"]
    assert math.isclose(sum(shares.values()), 1.0, rel_tol=1e-9)
    assert 0.0 < shares["matmul"] < 1.0 and shares["fused kernels"] == 0.0
    ops = [r["op"] for r in summary["top"]]
    assert "aten::mm" in ops and "aten::exp" in ops and len(ops) == 3
    mm = next(r for r in summary["top"] if r["op"] == "aten::mm")
    assert mm["calls"] == 1.0  # per step
    assert math.isclose(mm["share"], shares["matmul"], rel_tol=1e-9)
    assert summary["ms_per_step"] > 0


def test_a_profiled_row_reports_its_step_by_op():
    row = time_row("schnet", "small", "eager", steps=2, warmup=1, device="cpu", data="ethanol", profile=4)
    summary = row["profile"]
    assert math.isclose(sum(summary["shares"].values()), 1.0, rel_tol=1e-9)
    assert summary["shares"]["matmul"] > 0.05  # SchNet's filter network and atom-wise layers
    assert len(summary["top"]) == 4
    assert row["matmul_flops"] > 0


def test_a_profiled_compiled_row_counts_its_memory_traffic():
    """Inductor's count of the bytes the compiled step's kernels read and write: at least the step's
    parameters, read in the forward and again in the backward, and far below 10 GiB for one ethanol batch;
    the copy rate is this core's, in bytes per second."""
    # in its own process, as `make bench` runs each row: the row turns inductor's caches off
    row = run_row("schnet", "small", "compiled", "cpu", steps=2, data="ethanol", profile=3)
    assert "error" not in row, row
    assert not row["fell_back"]
    params = sum(p.numel() * p.element_size() for p in _model("schnet", "small", "eager", "original").parameters())
    assert 2 * params < row["compiled_bytes"] < 10 * 2**30
    assert 1e8 < row["copy_rate"] < 1e13
    assert row["profile"]["shares"]["fused kernels"] > 0  # inductor's kernels, by name
