# dcnn-ablate — see README.md
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
DATA ?= data/ethanol-gfn2-500K.npz
STORAGE ?= $(CURDIR)/results
ARGS ?=
export RAY_AUTH_MODE ?= disabled

.PHONY: install test ablate ablate-mlearn report ui train data data-mlearn bench docs

EXTRAS ?= dev

install:  ## torch first, pinned: the CPU wheel on disk (a bare `torch` pulls a multi-GB CUDA build); EXTRAS=dev,mace adds MACE
	$(PIP) install torch==2.13.0
	$(PIP) install -e ".[$(EXTRAS)]"

docs:  ## the documentation site (docs/ → site/, MkDocs Material; strict: a broken link or missing page fails; the CLI reference and the list of studies generated from the code)
	NO_MKDOCS_2_WARNING=1 $(PYTHON) -m mkdocs build --strict

TEST_WORKERS ?= 2

test:  ## the suite in $(TEST_WORKERS) processes (pytest-xdist, one Ray each: tests/conftest.py); the 15 slowest tests listed
	$(PYTHON) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=15

ablate:  ## the seed plan on the bundled data (local Ray, or $$RAY_ADDRESS); flags via ARGS="..."
	dcnn-ablate ablate --storage $(STORAGE) $(ARGS)

ablate-mlearn:  ## the seed plan on real DFT (mlearn Mo and Si, official split; SchNet, then DimeNet++ on Mo): not make ablate, hours on 2 cores (data/README.md)
	dcnn-ablate ablate --study mlearn-seed-plan --storage $(STORAGE) $(ARGS)
	dcnn-ablate ablate --study mlearn-angular --storage $(STORAGE) $(ARGS)

report:  ## rebuild a study's report: make report EXPERIMENT=seed-plan
	dcnn-ablate report $(STORAGE)/$(or $(EXPERIMENT),seed-plan)

ui:  ## MLflow UI on 127.0.0.1:5000 over the study store; prints each study's runs-table link
	$(PYTHON) -m orchestrator.ui --storage $(STORAGE) --host 127.0.0.1 --port 5000

train:  ## one training run on the bundled data; flags via ARGS="..."
	dcnn-ablate train --dataset $(DATA) $(ARGS)

data:  ## regenerate the bundled data sets (bit-identical on the CPU that made them, within rounding elsewhere: data/README.md; aspirin ≈ 5 min, catalysis ≈ 3 min)
	dcnn-ablate data generate --molecule ethanol --frames 2000 --temperature 500 --seed 0 --out $(DATA) --force
	dcnn-ablate data generate --molecule aspirin --frames 2000 --temperature 500 --seed 0 --out data/aspirin-gfn2-500K.npz --force
	$(PYTHON) -c "from dcnn.atomistic.generate import generate_catalysis; generate_catalysis('data/catalysis-emt.npz', frames_per_system=110, temperature=600, seed=0, overwrite=True)"
	$(MAKE) data-mlearn
	sha256sum $(DATA) data/aspirin-gfn2-500K.npz data/catalysis-emt.npz

data-mlearn:  ## convert the bundled mlearn Mo and Si JSON (data/mlearn/, real DFT) to data/mlearn-{Mo,Si}.npz (seconds)
	for el in Mo Si; do $(PYTHON) -m dcnn.atomistic.convert_mlearn data/mlearn/$$el-training.json data/mlearn/$$el-test.json \
		data/mlearn-$$el.npz --name mlearn-$$el; done
	sha256sum data/mlearn/*.json data/mlearn-Mo.npz data/mlearn-Si.npz

bench:  ## ms per energy+force training step of every model (small preset), PyG's SchNet and DimeNet++ alongside, then eager vs compiled on a molecule and on real periodic DFT cells (mlearn Mo) with each step's FLOP limit (where a step goes and its memory-traffic limit: `python -m benchmarks.bench_compile --data mlearn-Mo --presets small --profile 5`), and the error rates and trials of `--seeds auto` by simulation; flags via ARGS="--presets small paper --models schnet"
	$(PYTHON) -m benchmarks.bench_models $(ARGS)
	$(PYTHON) -m benchmarks.bench_compile
	$(PYTHON) -m benchmarks.bench_compile --data mlearn-Mo --presets small --flush-denormals on
	$(PYTHON) -m benchmarks.seed_design
