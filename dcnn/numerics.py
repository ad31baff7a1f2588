"""CPU floating-point settings a training process applies before it computes anything.

**Denormals.** The Gaussian radial features of SchNet/CGCNN, exp(−γ(d − μ_k)²), underflow *gradually*
for distances far from a centre: values below 1.2e-38 (float32) are denormal (subnormal) floats, and
their products in the backward pass make more.  Some x86 CPUs handle denormal operands or results in
microcode, up to ~100× slower per instruction: measured on one 2-core machine of ours, CGCNN's weight-
gradient matmul over the RBF features (4 % of its inputs denormal) ran at 0.85 GFLOP/s, and a CGCNN
step took 93.7 ms instead of 18.4 ms with denormals flushed (SchNet 21.3 → 9.7 ms); on an AMD EPYC
machine the same step costs the same either way.  Flushing sets the CPU's FTZ/DAZ flags: a denormal
result becomes 0 and a denormal input reads as 0.  Every such value is < 1.2e-38 in magnitude, so a
model's energies, forces and gradients change only at float32 rounding level (`make ablate`'s
reference arms before/after: docs/speed.md).  TensorFlow flushes denormals on CPU by default; PyTorch
does not, hence this module.

The flags are per thread: `configure_cpu` sets them on the calling thread, and threads created later
by it (torch's intra-op OpenMP pool, started at the first parallel region) inherit them (POSIX threads
inherit the floating-point environment).  Trials run one torch thread each, on the calling thread.
Eager and compiled (inductor C++) steps run on that thread alike, so both are covered.
"""
from __future__ import annotations

import torch

__all__ = ["configure_cpu", "denormals_flushed", "fast_allocator", "allocator_in_use", "ALLOCATOR_LIBRARIES"]


def configure_cpu(threads: int, flush_denormals: bool = True) -> bool:
    """Set torch's intra-op threads and denormal flushing for this process; return whether denormals
    are flushed now (False also where the CPU has no such mode: then nothing changes)."""
    torch.set_num_threads(int(threads))
    supported = torch.set_flush_denormal(bool(flush_denormals))
    return bool(flush_denormals and supported)


def denormals_flushed() -> bool:
    """Whether the calling thread flushes denormals now: 1e-39 (denormal in float32) × 1 reads as 0."""
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    return bool((tiny * 1.0).item() == 0.0)


# Allocators a worker process can preload (Debian: libtcmalloc-minimal4, libjemalloc2), in order of preference.
ALLOCATOR_LIBRARIES = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}
_LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")


def fast_allocator() -> str | None:
    """The path of a thread-caching malloc installed on this machine, for training processes to preload
    (`LD_PRELOAD`), or None; `DCNN_ALLOCATOR=system` opts out.

    Why: a force-training step allocates and frees hundreds of short-lived tensors of 0.1-1 MB; glibc's
    malloc hands them back as memory that is cold in cache (or unmapped), tcmalloc reuses hot memory.  The
    PyTorch CPU performance guide recommends it; measured here (one thread, batch 20 ethanol): CGCNN step
    44.8 → 33.5 ms, SchNet 21.8 → 20.6 ms (docs/speed.md)."""
    import os

    if os.environ.get("DCNN_ALLOCATOR", "auto") == "system":
        return None
    for name in ALLOCATOR_LIBRARIES.values():
        for folder in _LIBRARY_DIRS:
            path = os.path.join(folder, name)
            if os.path.exists(path):
                return path
    return None


def allocator_in_use() -> str:
    """Which malloc this process runs on: "tcmalloc", "jemalloc" or "glibc" (read from its memory map)."""
    try:
        with open("/proc/self/maps") as fh:
            maps = fh.read()
    except OSError:
        return "unknown"
    for name in ALLOCATOR_LIBRARIES:
        if name in maps:
            return name
    return "glibc"
