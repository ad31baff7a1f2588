# dcnn-ablate — see README.md
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DATA ?= data/ethanol-gfn2-500K.npz

.PHONY: install test train data bench

install:  ## torch first, pinned: the CPU wheel on disk (a bare `torch` pulls a multi-GB CUDA build)
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[dev]"

test:
	$(PYTHON) -m pytest -q

train:  ## one training run on the bundled data; pass flags with ARGS="..."
	dcnn-ablate train --dataset $(DATA) $(ARGS)

data:  ## regenerate the bundled data set (bit-identical; see data/README.md)
	dcnn-ablate data generate --molecule ethanol --frames 2000 --temperature 500 --seed 0 --out $(DATA) --force
	sha256sum $(DATA)

bench:  ## our SchNet vs PyG's: ms per energy+force training step, small and paper presets
	$(PYTHON) -m benchmarks.bench_schnet
